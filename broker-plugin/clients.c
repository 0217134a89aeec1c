/*
 * Who is connected, since when, from where, and what they subscribed to; connect and disconnect
 * events. Mosquitto 2.0 gives plugins no list of clients or subscriptions and no connect event, so
 * the plugin keeps its own table from the events it does get (docs/broker-plugin.md):
 *
 *   BASIC_AUTH   a login attempt: the client is *pending*, with the time of its CONNECT.
 *   DISCONNECT   a pending client without a client id was refused (the broker drops the id of a
 *                refused login before this event): forgotten, no event. Any other: disconnected.
 *   TICK, or any ACL check of the client
 *                a pending client that is still there was let in (the broker answers a CONNECT
 *                within one pass of its loop, and TICK ends every pass): connected.
 *
 * Records are kept by client id, so a session outlives its connection: a client that comes back
 * without a clean start still has the subscriptions it made before. A clean start, and the end of a
 * connection that started clean, forget them, as the broker does (but see on_disconnect for MQTT 5).
 */
#include <sys/types.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plugin.h"

/* The id table: chained buckets, doubled when the load passes 1. */
struct entry {
	struct client_rec rec;
	struct entry *next;
};

static struct entry **buckets = NULL;
static size_t bucket_count = 0;
static size_t rec_count = 0;
static size_t revoked_total = 0;

/* Logins seen and not yet decided (normally cleared within one pass of the broker's loop). */
struct pending {
	struct mosquitto *conn;
	int64_t at_ms;
};

static struct pending *pending = NULL;
static size_t pending_count = 0;
static size_t pending_cap = 0;

static uint64_t hash_id(const char *id)
{
	uint64_t h = 1469598103934665603ULL;
	for(const unsigned char *c = (const unsigned char *)id; *c; c++){
		h = (h ^ *c) * 1099511628211ULL;
	}
	return h;
}

static int grow_buckets(void)
{
	size_t count = bucket_count ? bucket_count * 2 : 1024;
	struct entry **grown = mosquitto_calloc(count, sizeof(struct entry *));

	if(grown == NULL) return MOSQ_ERR_NOMEM;
	for(size_t i = 0; i < bucket_count; i++){
		struct entry *e = buckets[i], *next;
		for(; e != NULL; e = next){
			next = e->next;
			size_t b = hash_id(e->rec.id) & (count - 1);
			e->next = grown[b];
			grown[b] = e;
		}
	}
	mosquitto_free(buckets);
	buckets = grown;
	bucket_count = count;
	return MOSQ_ERR_SUCCESS;
}

struct client_rec *clients_find(const char *id)
{
	if(id == NULL || bucket_count == 0) return NULL;
	for(struct entry *e = buckets[hash_id(id) & (bucket_count - 1)]; e != NULL; e = e->next){
		if(!strcmp(e->rec.id, id)) return &e->rec;
	}
	return NULL;
}

static struct client_rec *find_or_add(const char *id)
{
	struct client_rec *rec = clients_find(id);
	struct entry *e;
	size_t b;

	if(rec != NULL) return rec;
	if(rec_count >= bucket_count && grow_buckets() != MOSQ_ERR_SUCCESS) return NULL;
	e = mosquitto_calloc(1, sizeof(*e));
	if(e == NULL) return NULL;
	e->rec.id = mosquitto_strdup(id);
	if(e->rec.id == NULL){
		mosquitto_free(e);
		return NULL;
	}
	b = hash_id(id) & (bucket_count - 1);
	e->next = buckets[b];
	buckets[b] = e;
	rec_count++;
	return &e->rec;
}

static void forget_session(struct client_rec *rec)
{
	for(size_t i = 0; i < rec->sub_count; i++){
		if(shares_is_shared(rec->subs[i].filter)){
			shares_changed();
			break;
		}
	}
	for(size_t i = 0; i < rec->sub_count; i++) mosquitto_free(rec->subs[i].filter);
	for(size_t i = 0; i < rec->revoked_count; i++) mosquitto_free(rec->revoked[i]);
	revoked_total -= rec->revoked_count;
	mosquitto_free(rec->subs);
	mosquitto_free(rec->revoked);
	rec->subs = NULL;
	rec->revoked = NULL;
	rec->sub_count = rec->sub_cap = rec->revoked_count = 0;
}

static void free_rec(struct client_rec *rec)
{
	forget_session(rec);
	mosquitto_free(rec->id);
	mosquitto_free(rec->address);
	mosquitto_free(rec->username);
}

/* Drops an offline record that holds nothing worth keeping. */
static void drop_if_empty(struct client_rec *rec)
{
	struct entry **link;

	if(rec->conn != NULL || rec->sub_count > 0 || rec->revoked_count > 0) return;
	link = &buckets[hash_id(rec->id) & (bucket_count - 1)];
	for(; *link != NULL; link = &(*link)->next){
		if(&(*link)->rec == rec){
			struct entry *gone = *link;
			*link = gone->next;
			free_rec(&gone->rec);
			mosquitto_free(gone);
			rec_count--;
			return;
		}
	}
}

void clients_cleanup(void)
{
	for(size_t i = 0; i < bucket_count; i++){
		struct entry *e = buckets[i], *next;
		for(; e != NULL; e = next){
			next = e->next;
			free_rec(&e->rec);
			mosquitto_free(e);
		}
	}
	mosquitto_free(buckets);
	mosquitto_free(pending);
	buckets = NULL;
	pending = NULL;
	bucket_count = rec_count = revoked_total = pending_count = pending_cap = 0;
}

static char *dup_or_null(const char *s)
{
	return s != NULL ? mosquitto_strdup(s) : NULL;
}

static void replace(char **field, const char *value)
{
	mosquitto_free(*field);
	*field = dup_or_null(value);
}

static void add_string_or_null(cJSON *obj, const char *name, const char *value)
{
	if(value != NULL) cJSON_AddStringToObject(obj, name, value);
	else cJSON_AddNullToObject(obj, name);
}

cJSON *clients_json(const struct client_rec *rec, bool with_subscriptions)
{
	cJSON *obj = cJSON_CreateObject(), *subs;

	if(obj == NULL) return NULL;
	cJSON_AddStringToObject(obj, "clientId", rec->id);
	cJSON_AddBoolToObject(obj, "online", rec->conn != NULL);
	add_string_or_null(obj, "address", rec->address);
	add_string_or_null(obj, "username", rec->username);
	cJSON_AddNumberToObject(obj, "protocolVersion", rec->protocol_version);
	cJSON_AddNumberToObject(obj, "keepalive", rec->keepalive);
	cJSON_AddBoolToObject(obj, "cleanStart", rec->clean_start);
	cJSON_AddNumberToObject(obj, "connectedAtMs", (double)rec->connected_ms);
	if(rec->disconnected_ms) cJSON_AddNumberToObject(obj, "disconnectedAtMs", (double)rec->disconnected_ms);
	else cJSON_AddNullToObject(obj, "disconnectedAtMs");
	cJSON_AddNumberToObject(obj, "subscriptionCount", (double)rec->sub_count);
	if(with_subscriptions){
		subs = cJSON_AddArrayToObject(obj, "subscriptions");
		for(size_t i = 0; subs != NULL && i < rec->sub_count; i++){
			cJSON *sub = cJSON_CreateObject();
			if(sub == NULL) break;
			cJSON_AddStringToObject(sub, "topicFilter", rec->subs[i].filter);
			cJSON_AddNumberToObject(sub, "qos", rec->subs[i].qos);
			cJSON_AddItemToArray(subs, sub);
		}
	}
	return obj;
}

static void publish_event(cJSON *event)
{
	char *payload;

	if(event == NULL) return;
	payload = cJSON_PrintUnformatted(event);
	cJSON_Delete(event);
	if(payload == NULL){
		mosquitto_log_printf(MOSQ_LOG_WARNING, PLUGIN_NAME ": out of memory for a client event, not published");
		return;
	}
	mosquitto_broker_publish_copy(NULL, config.events_topic, (int)strlen(payload), payload, 0, false, NULL);
	cJSON_free(payload);
}

/* {"event": kind, "timestampMs": at, "clientId", "address", "username", ...}. */
static cJSON *event_json(const char *kind, int64_t at_ms, const char *id, const char *address, const char *username)
{
	cJSON *event = cJSON_CreateObject();

	if(event == NULL) return NULL;
	cJSON_AddStringToObject(event, "event", kind);
	cJSON_AddNumberToObject(event, "timestampMs", (double)at_ms);
	cJSON_AddStringToObject(event, "clientId", id);
	add_string_or_null(event, "address", address);
	add_string_or_null(event, "username", username);
	return event;
}

/* `connected_ms` 0: not tracked (plugin_opt_clients off), the field is left out. */
static cJSON *disconnect_event(int64_t at_ms, const char *id, const char *address, const char *username, int reason,
		int64_t connected_ms)
{
	cJSON *event = event_json("disconnect", at_ms, id, address, username);

	if(event == NULL) return NULL;
	/* Mosquitto 2.0 always passes -1: why the client went is only in the broker's log line. */
	if(reason < 0) cJSON_AddNullToObject(event, "reason");
	else cJSON_AddNumberToObject(event, "reason", reason);
	if(connected_ms) cJSON_AddNumberToObject(event, "connectedAtMs", (double)connected_ms);
	return event;
}

/* A pending login that the broker let in: the record is (re)filled from the connection. */
static void connected(struct mosquitto *conn, int64_t at_ms)
{
	const char *id = mosquitto_client_id(conn);
	struct client_rec *rec;
	cJSON *event;

	if(id == NULL) return;
	rec = find_or_add(id);
	if(rec == NULL){
		mosquitto_log_printf(MOSQ_LOG_WARNING, PLUGIN_NAME ": out of memory: client %s is not tracked", id);
		return;
	}
	rec->conn = conn;
	rec->connected_ms = at_ms;
	rec->disconnected_ms = 0;
	replace(&rec->address, mosquitto_client_address(conn));
	replace(&rec->username, mosquitto_client_username(conn));
	rec->protocol_version = mosquitto_client_protocol_version(conn);
	rec->keepalive = mosquitto_client_keepalive(conn);
	rec->clean_start = mosquitto_client_clean_session(conn);
	if(rec->clean_start) forget_session(rec);
	if(config.events){
		event = event_json("connect", at_ms, id, rec->address, rec->username);
		if(event != NULL){
			cJSON_AddNumberToObject(event, "protocolVersion", rec->protocol_version);
			cJSON_AddNumberToObject(event, "keepalive", rec->keepalive);
			cJSON_AddBoolToObject(event, "cleanStart", rec->clean_start);
		}
		publish_event(event);
	}
}

static bool take_pending(const struct mosquitto *conn, int64_t *at_ms)
{
	for(size_t i = 0; i < pending_count; i++){
		if(pending[i].conn == conn){
			*at_ms = pending[i].at_ms;
			pending[i] = pending[--pending_count];
			return true;
		}
	}
	return false;
}

/* Decides the login of `conn` now if it is still pending: it got past authentication. */
static void settle(struct mosquitto *conn)
{
	int64_t at_ms;

	if(pending_count > 0 && take_pending(conn, &at_ms)) connected(conn, at_ms);
}

int clients_on_basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *ed = event_data;
	int64_t ignored;

	(void)event;
	(void)userdata;
	take_pending(ed->client, &ignored);
	/* Any answer but success, denial or defer makes the broker close the connection without a CONNACK:
	 * what a client sees of a broker not yet up, and retries. */
	if(!shares_admit(ed->client, ed->username)) return MOSQ_ERR_CONN_REFUSED;
	if(pending_count == pending_cap){
		size_t cap = pending_cap ? pending_cap * 2 : 64;
		struct pending *grown = mosquitto_realloc(pending, cap * sizeof(*pending));
		if(grown == NULL){
			mosquitto_log_printf(MOSQ_LOG_WARNING, PLUGIN_NAME ": out of memory: a login is not tracked");
			return config.allow ? MOSQ_ERR_SUCCESS : MOSQ_ERR_PLUGIN_DEFER;
		}
		pending = grown;
		pending_cap = cap;
	}
	pending[pending_count++] = (struct pending){ed->client, now_ms()};
	/* The login itself is for dynamic security to decide. */
	return config.allow ? MOSQ_ERR_SUCCESS : MOSQ_ERR_PLUGIN_DEFER;
}

int clients_on_tick(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)event_data;
	(void)userdata;
	while(pending_count > 0){
		struct pending p = pending[--pending_count];
		connected(p.conn, p.at_ms);
	}
	shares_on_tick();
	return MOSQ_ERR_SUCCESS;
}

int clients_on_disconnect(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_disconnect *ed = event_data;
	const char *id = mosquitto_client_id(ed->client);
	struct client_rec *rec;
	int64_t at = now_ms();

	(void)event;
	(void)userdata;
	/* A refused CONNECT has no client id left by the time of this event: nothing had connected. */
	if(id == NULL){
		int64_t ignored;
		if(pending_count > 0) take_pending(ed->client, &ignored);
		return MOSQ_ERR_SUCCESS;
	}
	if(!config.clients){
		if(config.events) publish_event(disconnect_event(at, id, mosquitto_client_address(ed->client),
				mosquitto_client_username(ed->client), ed->reason, 0));
		return MOSQ_ERR_SUCCESS;
	}
	settle(ed->client);
	rec = clients_find(id);
	/* Another connection with this id (a take-over) may own the record by now. */
	if(rec == NULL || rec->conn != ed->client) return MOSQ_ERR_SUCCESS;
	rec->conn = NULL;
	rec->disconnected_ms = at;
	if(config.events){
		publish_event(disconnect_event(at, id, rec->address, rec->username, ed->reason, rec->connected_ms));
	}
	/* A clean session (3.1.1) ends with its connection. An MQTT 5 session's expiry interval is not
	 * given to plugins: one that started clean is taken to end now (session expiry 0, what clients
	 * send unless told otherwise), one that resumed is kept until the id starts clean again. */
	if(rec->clean_start) forget_session(rec);
	drop_if_empty(rec);
	return MOSQ_ERR_SUCCESS;
}

/* The filter a shared subscription `$share/GROUP/FILTER` matches topics with. */
static const char *match_filter(const char *filter)
{
	if(!strncmp(filter, "$share/", 7)){
		const char *slash = strchr(filter + 7, '/');
		if(slash != NULL) return slash + 1;
	}
	return filter;
}

static bool matches(const char *filter, const char *topic)
{
	bool result = false;
	return mosquitto_topic_matches_sub(match_filter(filter), topic, &result) == MOSQ_ERR_SUCCESS && result;
}

static ssize_t sub_index(const struct client_rec *rec, const char *filter)
{
	for(size_t i = 0; i < rec->sub_count; i++){
		if(!strcmp(rec->subs[i].filter, filter)) return (ssize_t)i;
	}
	return -1;
}

static void unrevoke(struct client_rec *rec, const char *filter)
{
	for(size_t i = 0; i < rec->revoked_count; i++){
		if(!strcmp(rec->revoked[i], filter)){
			mosquitto_free(rec->revoked[i]);
			rec->revoked[i] = rec->revoked[--rec->revoked_count];
			revoked_total--;
			return;
		}
	}
}

static void subscribed(struct mosquitto *conn, const char *filter, uint8_t qos)
{
	struct client_rec *rec = clients_find(mosquitto_client_id(conn));
	ssize_t at;

	if(rec == NULL || rec->conn != conn) return;
	unrevoke(rec, filter);
	at = sub_index(rec, filter);
	if(shares_is_shared(filter)){
		shares_renewed(filter, rec->id);
		/* A new shared subscription of a session that outlives its connection changes the record. */
		if(!rec->clean_start && at < 0) shares_changed();
	}
	if(at >= 0){
		rec->subs[at].qos = qos;
		return;
	}
	if(rec->sub_count == rec->sub_cap){
		size_t cap = rec->sub_cap ? rec->sub_cap * 2 : 4;
		struct client_sub *grown = mosquitto_realloc(rec->subs, cap * sizeof(*grown));
		if(grown == NULL) return;
		rec->subs = grown;
		rec->sub_cap = cap;
	}
	rec->subs[rec->sub_count].filter = mosquitto_strdup(filter);
	if(rec->subs[rec->sub_count].filter == NULL) return;
	rec->subs[rec->sub_count++].qos = qos;
}

static void unsubscribed(struct client_rec *rec, const char *filter)
{
	ssize_t at = sub_index(rec, filter);

	if(at < 0) return;
	if(shares_is_shared(filter)) shares_changed();
	mosquitto_free(rec->subs[at].filter);
	rec->subs[at] = rec->subs[--rec->sub_count];
}

/* A delivery to `rec` on `topic` only through a revoked filter (no other subscription matches it). */
static bool revoked(const struct client_rec *rec, const char *topic)
{
	bool hit = false;

	for(size_t i = 0; i < rec->revoked_count && !hit; i++) hit = matches(rec->revoked[i], topic);
	if(!hit) return false;
	for(size_t i = 0; i < rec->sub_count; i++){
		if(matches(rec->subs[i].filter, topic)) return false;
	}
	return true;
}

int clients_on_acl(const struct mosquitto_evt_acl_check *ed)
{
	struct client_rec *rec;

	/* Every ACL check comes after the client's login succeeded (the broker checks none before). */
	settle(ed->client);
	switch(ed->access){
		case MOSQ_ACL_SUBSCRIBE:
			subscribed(ed->client, ed->topic, ed->qos);
			break;
		case MOSQ_ACL_UNSUBSCRIBE:
			rec = clients_find(mosquitto_client_id(ed->client));
			if(rec != NULL && rec->conn == ed->client){
				unsubscribed(rec, ed->topic);
				unrevoke(rec, ed->topic);
			}
			break;
		case MOSQ_ACL_READ:
			/* The hot path: one comparison unless an administrator revoked something. */
			if(revoked_total == 0) break;
			rec = clients_find(mosquitto_client_id(ed->client));
			if(rec != NULL && rec->revoked_count > 0 && revoked(rec, ed->topic)) return MOSQ_ERR_ACL_DENIED;
			break;
		default:
			break;
	}
	return MOSQ_ERR_PLUGIN_DEFER;
}

int clients_unsubscribe(struct client_rec *rec, const char *filter)
{
	char **grown;

	if(sub_index(rec, filter) < 0) return MOSQ_ERR_NOT_FOUND;
	grown = mosquitto_realloc(rec->revoked, (rec->revoked_count + 1) * sizeof(char *));
	if(grown == NULL) return MOSQ_ERR_NOMEM;
	rec->revoked = grown;
	rec->revoked[rec->revoked_count] = mosquitto_strdup(filter);
	if(rec->revoked[rec->revoked_count] == NULL) return MOSQ_ERR_NOMEM;
	rec->revoked_count++;
	revoked_total++;
	unsubscribed(rec, filter);
	return MOSQ_ERR_SUCCESS;
}

static int by_id(const void *a, const void *b)
{
	return strcmp((*(struct client_rec *const *)a)->id, (*(struct client_rec *const *)b)->id);
}

int clients_list(bool online_only, struct client_rec ***out, size_t *count)
{
	struct client_rec **list = mosquitto_malloc((rec_count ? rec_count : 1) * sizeof(*list));
	size_t n = 0;

	if(list == NULL) return MOSQ_ERR_NOMEM;
	for(size_t i = 0; i < bucket_count; i++){
		for(struct entry *e = buckets[i]; e != NULL; e = e->next){
			if(e->rec.conn != NULL || !online_only) list[n++] = &e->rec;
		}
	}
	qsort(list, n, sizeof(*list), by_id);
	*out = list;
	*count = n;
	return MOSQ_ERR_SUCCESS;
}
