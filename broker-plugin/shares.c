/*
 * Shared subscriptions across a broker restart. Mosquitto 2.0 restores a persistent session's
 * queued messages and its plain subscriptions from its save file, but not its `$share/...`
 * subscriptions (measured: tests/integration/test_broker_durability.py). Until the workers
 * subscribe again, a message published on their topics matches no subscriber: the broker answers
 * PUBACK 0x10 and drops it, and devices do not send it again.
 *
 * So the plugin keeps its own record of them: the shared subscriptions held by sessions that outlive
 * their connection (clean start false), written to plugin_opt_share_state on the data volume each
 * time that set changes. When the broker starts with such a record, it *holds* clients: every login
 * other than a recorded holder's (same client id or same username), a control user's or an exempt
 * client id's (plugin_opt_share_exempt: the exporter sidecar, whose readiness is the Pod's) is refused by
 * closing the connection without a CONNACK, which every MQTT client takes for a broker not yet up and
 * retries; once every recorded filter has been subscribed again (by anyone), or plugin_opt_share_wait
 * seconds after the first pass of the broker's loop, logins are let through again and the record is
 * rewritten from what is subscribed now (a filter whose holder never came back is dropped then).
 *
 * Nothing is written while holding: a second restart before the workers are back keeps the record.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "plugin.h"

struct holder {
	char *client_id;
	char *username;  /* NULL without one */
};

struct awaited {
	char *filter;          /* $share/GROUP/FILTER */
	struct holder *holders;
	size_t holder_count;
	bool renewed;
};

static struct awaited *awaited = NULL;
static size_t awaited_count = 0;
static size_t renewed_count = 0;
static bool holding = false;
static int64_t hold_started_ms = 0;   /* the first TICK: the broker has restored its save file by then */
static uint64_t refused = 0;
static bool dirty = false;

bool shares_is_shared(const char *filter)
{
	return !strncmp(filter, "$share/", 7);
}

static void free_awaited(void)
{
	for(size_t i = 0; i < awaited_count; i++){
		for(size_t h = 0; h < awaited[i].holder_count; h++){
			mosquitto_free(awaited[i].holders[h].client_id);
			mosquitto_free(awaited[i].holders[h].username);
		}
		mosquitto_free(awaited[i].holders);
		mosquitto_free(awaited[i].filter);
	}
	mosquitto_free(awaited);
	awaited = NULL;
	awaited_count = renewed_count = 0;
}

static struct awaited *find_awaited(const char *filter)
{
	for(size_t i = 0; i < awaited_count; i++){
		if(!strcmp(awaited[i].filter, filter)) return &awaited[i];
	}
	return NULL;
}

static int add_awaited(const char *filter, const char *client_id, const char *username)
{
	struct awaited *a = find_awaited(filter);
	struct holder *grown;

	if(a == NULL){
		struct awaited *more = mosquitto_realloc(awaited, (awaited_count + 1) * sizeof(*awaited));
		if(more == NULL) return MOSQ_ERR_NOMEM;
		awaited = more;
		a = &awaited[awaited_count];
		*a = (struct awaited){mosquitto_strdup(filter), NULL, 0, false};
		if(a->filter == NULL) return MOSQ_ERR_NOMEM;
		awaited_count++;
	}
	grown = mosquitto_realloc(a->holders, (a->holder_count + 1) * sizeof(*grown));
	if(grown == NULL) return MOSQ_ERR_NOMEM;
	a->holders = grown;
	a->holders[a->holder_count].client_id = mosquitto_strdup(client_id);
	a->holders[a->holder_count].username = username != NULL ? mosquitto_strdup(username) : NULL;
	if(a->holders[a->holder_count].client_id == NULL) return MOSQ_ERR_NOMEM;
	a->holder_count++;
	return MOSQ_ERR_SUCCESS;
}

static char *read_file(const char *path, bool *missing)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	long size;

	*missing = f == NULL && errno == ENOENT;
	if(f == NULL) return NULL;
	if(fseek(f, 0, SEEK_END) == 0 && (size = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0){
		buf = mosquitto_malloc((size_t)size + 1);
		if(buf != NULL && fread(buf, 1, (size_t)size, f) == (size_t)size){
			buf[size] = '\0';
		}else{
			mosquitto_free(buf);
			buf = NULL;
		}
	}
	fclose(f);
	return buf;
}

/* {"version": 1, "shares": [{"topicFilter", "clientId", "username"}]}; entries that are not so are
 * skipped with a warning (the broker must start whatever the file holds). */
static void load(void)
{
	bool missing = false;
	char *text = read_file(config.share_state, &missing);
	cJSON *root, *shares, *entry;

	if(text == NULL){
		if(!missing){
			mosquitto_log_printf(MOSQ_LOG_WARNING, PLUGIN_NAME ": cannot read %s (%s): not holding clients for shared subscriptions",
				config.share_state, strerror(errno));
		}
		return;
	}
	root = cJSON_Parse(text);
	mosquitto_free(text);
	shares = cJSON_GetObjectItemCaseSensitive(root, "shares");
	if(!cJSON_IsArray(shares)){
		mosquitto_log_printf(MOSQ_LOG_WARNING, PLUGIN_NAME ": %s is not a record of shared subscriptions: ignored", config.share_state);
		cJSON_Delete(root);
		return;
	}
	cJSON_ArrayForEach(entry, shares){
		const cJSON *filter = cJSON_GetObjectItemCaseSensitive(entry, "topicFilter");
		const cJSON *id = cJSON_GetObjectItemCaseSensitive(entry, "clientId");
		const cJSON *user = cJSON_GetObjectItemCaseSensitive(entry, "username");
		if(!cJSON_IsString(filter) || !shares_is_shared(filter->valuestring) || !cJSON_IsString(id)){
			mosquitto_log_printf(MOSQ_LOG_WARNING, PLUGIN_NAME ": %s: an entry without a $share topicFilter and a clientId: skipped", config.share_state);
			continue;
		}
		if(add_awaited(filter->valuestring, id->valuestring, cJSON_IsString(user) ? user->valuestring : NULL) != MOSQ_ERR_SUCCESS){
			mosquitto_log_printf(MOSQ_LOG_WARNING, PLUGIN_NAME ": out of memory reading %s", config.share_state);
			break;
		}
	}
	cJSON_Delete(root);
}

int shares_start(void)
{
	if(config.share_state == NULL) return MOSQ_ERR_SUCCESS;
	load();
	holding = awaited_count > 0 && config.share_wait_s > 0;
	if(holding){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, PLUGIN_NAME ": holding new clients until %zu shared subscription(s) of persistent sessions are renewed (at most %d s): Mosquitto does not restore them, and what is published before would be dropped",
			awaited_count, config.share_wait_s);
	}else{
		free_awaited();
	}
	return MOSQ_ERR_SUCCESS;
}

static int write_state(void);

void shares_cleanup(void)
{
	if(config.share_state != NULL && dirty && !holding) write_state();
	free_awaited();
	holding = false;
	hold_started_ms = 0;
	refused = 0;
	dirty = false;
}

static bool is_holder(const char *client_id, const char *username)
{
	for(size_t i = 0; i < awaited_count; i++){
		for(size_t h = 0; h < awaited[i].holder_count; h++){
			const struct holder *o = &awaited[i].holders[h];
			if(client_id != NULL && !strcmp(o->client_id, client_id)) return true;
			if(username != NULL && o->username != NULL && !strcmp(o->username, username)) return true;
		}
	}
	return false;
}

static bool exempt(const char *client_id)
{
	for(size_t i = 0; client_id != NULL && i < config.share_exempt_count; i++){
		if(!strcmp(config.share_exempt[i], client_id)) return true;
	}
	return false;
}

bool shares_admit(const struct mosquitto *client, const char *username)
{
	const char *id;

	if(!holding) return true;
	id = mosquitto_client_id(client);
	if(is_holder(id, username) || control_user(client) || exempt(id)) return true;
	if(refused++ == 0){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, PLUGIN_NAME ": client %s refused: holding new clients until shared subscriptions are renewed",
			id != NULL ? id : "(no id)");
	}
	return false;
}

void shares_changed(void)
{
	dirty = true;
}

void shares_renewed(const char *filter, const char *client_id)
{
	struct awaited *a;

	if(!holding || client_id == NULL) return;
	a = find_awaited(filter);
	if(a != NULL && !a->renewed){
		a->renewed = true;
		renewed_count++;
		mosquitto_log_printf(MOSQ_LOG_INFO, PLUGIN_NAME ": %s renewed by %s (%zu of %zu)",
			filter, client_id, renewed_count, awaited_count);
	}
}

static void stop_holding(int64_t now)
{
	char *missing = NULL;
	size_t len = 0;

	for(size_t i = 0; i < awaited_count; i++){
		if(awaited[i].renewed) continue;
		size_t add = strlen(awaited[i].filter) + 2;
		char *grown = mosquitto_realloc(missing, len + add + 1);
		if(grown == NULL) break;
		missing = grown;
		len += (size_t)snprintf(missing + len, add + 1, "%s%s", len ? ", " : "", awaited[i].filter);
	}
	if(missing == NULL){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, PLUGIN_NAME ": every shared subscription renewed after %.1f s; letting clients in (%llu login(s) refused meanwhile)",
			(double)(now - hold_started_ms) / 1000.0, (unsigned long long)refused);
	}else{
		mosquitto_log_printf(MOSQ_LOG_WARNING, PLUGIN_NAME ": letting clients in after %d s (plugin_opt_share_wait) with %zu of %zu shared subscription(s) not renewed, so what is published on them is dropped until their holders return: %s (%llu login(s) refused meanwhile)",
			config.share_wait_s, awaited_count - renewed_count, awaited_count, missing, (unsigned long long)refused);
		mosquitto_free(missing);
	}
	holding = false;
	free_awaited();
	dirty = true;
}

static int write_state(void)
{
	struct client_rec **list = NULL;
	size_t count = 0;
	cJSON *root = cJSON_CreateObject(), *shares;
	char *text = NULL, *tmp = NULL;
	FILE *f = NULL;
	int rc = MOSQ_ERR_NOMEM;

	if(root == NULL || clients_list(false, &list, &count) != MOSQ_ERR_SUCCESS) goto out;
	cJSON_AddNumberToObject(root, "version", 1);
	shares = cJSON_AddArrayToObject(root, "shares");
	if(shares == NULL) goto out;
	for(size_t i = 0; i < count; i++){
		const struct client_rec *rec = list[i];
		if(rec->clean_start) continue;   /* its session ends with its connection */
		for(size_t s = 0; s < rec->sub_count; s++){
			cJSON *entry;
			if(!shares_is_shared(rec->subs[s].filter)) continue;
			entry = cJSON_CreateObject();
			if(entry == NULL) goto out;
			cJSON_AddStringToObject(entry, "topicFilter", rec->subs[s].filter);
			cJSON_AddStringToObject(entry, "clientId", rec->id);
			if(rec->username != NULL) cJSON_AddStringToObject(entry, "username", rec->username);
			else cJSON_AddNullToObject(entry, "username");
			cJSON_AddItemToArray(shares, entry);
		}
	}
	text = cJSON_Print(root);
	tmp = mosquitto_malloc(strlen(config.share_state) + 5);
	if(text == NULL || tmp == NULL) goto out;
	sprintf(tmp, "%s.new", config.share_state);
	/* Written beside and renamed over, after fsync: a kill at any moment leaves the old or the new record. */
	rc = MOSQ_ERR_UNKNOWN;
	f = fopen(tmp, "wb");
	if(f == NULL) goto out;
	if(fputs(text, f) < 0 || fflush(f) != 0 || fsync(fileno(f)) != 0){
		fclose(f);
		goto out;
	}
	if(fclose(f) != 0 || rename(tmp, config.share_state) != 0) goto out;
	rc = MOSQ_ERR_SUCCESS;
out:
	if(rc != MOSQ_ERR_SUCCESS){
		mosquitto_log_printf(MOSQ_LOG_WARNING, PLUGIN_NAME ": cannot write %s (%s): the next restart may drop messages on shared subscriptions until they are renewed",
			config.share_state, rc == MOSQ_ERR_NOMEM ? "out of memory" : strerror(errno));
	}
	mosquitto_free(list);
	mosquitto_free(tmp);
	cJSON_free(text);
	cJSON_Delete(root);
	return rc;
}

void shares_on_tick(void)
{
	int64_t now;

	if(config.share_state == NULL) return;
	if(holding){
		now = now_ms();
		if(hold_started_ms == 0) hold_started_ms = now;
		if(renewed_count == awaited_count || now - hold_started_ms >= (int64_t)config.share_wait_s * 1000){
			stop_holding(now);
		}
		return;
	}
	/* A failed write is tried again at the next change, not every pass of the loop. */
	if(dirty){
		dirty = false;
		write_state();
	}
}
