/*
 * mqtt_operator_stamp: mqtt-operator's Mosquitto 2.0 plugin (plugin API v5). This file reads the
 * plugin_opt_* options, registers the callbacks of the other modules and decides ACL checks in the
 * order they must be decided (the control topic first, then revoked deliveries).
 *
 * Where it is loaded matters once `plugin_opt_clients on`: BASIC_AUTH and ACL_CHECK callbacks run in
 * load order and the first answer other than "defer" ends the chain, so the plugin must come before
 * dynamic security to see every login and subscription (it defers them all to it). Loaded alone
 * (no dynamic security: MqttInstance spec.authorization.enabled false) it needs `plugin_opt_access
 * allow`, or every deferred check would be a denial.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "plugin.h"

static mosquitto_plugin_id_t *plugin_id = NULL;
struct plugin_config config = {DEFAULT_FIELDS, true, NULL, false, false, NULL, 0, NULL, DEFAULT_SHARE_WAIT_S, NULL, 0, false};

int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int parse_fields(const char *value, unsigned *fields)
{
	char *copy = strdup(value), *save = NULL, *tok;
	unsigned out = 0;

	if(copy == NULL) return MOSQ_ERR_NOMEM;
	for(tok = strtok_r(copy, ", ", &save); tok != NULL; tok = strtok_r(NULL, ", ", &save)){
		if(!strcasecmp(tok, "clientid")) out |= FIELD_CLIENT_ID;
		else if(!strcasecmp(tok, "address")) out |= FIELD_ADDRESS;
		else if(!strcasecmp(tok, "messageid")) out |= FIELD_MESSAGE_ID;
		else if(!strcasecmp(tok, "time")) out |= FIELD_TIME;
		else if(!strcasecmp(tok, "none")) ;
		else{
			mosquitto_log_printf(MOSQ_LOG_ERR,
				PLUGIN_NAME ": unknown field '%s' in plugin_opt_fields (known: clientid, address, messageid, time, none)", tok);
			free(copy);
			return MOSQ_ERR_INVAL;
		}
	}
	free(copy);
	*fields = out;
	return MOSQ_ERR_SUCCESS;
}

/* A comma- or space-separated list, appended to *list. */
static int parse_list(const char *value, char ***list, size_t *count)
{
	char *copy = strdup(value), *save = NULL, *tok;

	if(copy == NULL) return MOSQ_ERR_NOMEM;
	for(tok = strtok_r(copy, ", ", &save); tok != NULL; tok = strtok_r(NULL, ", ", &save)){
		char **grown = mosquitto_realloc(*list, (*count + 1) * sizeof(char *));
		if(grown == NULL){
			free(copy);
			return MOSQ_ERR_NOMEM;
		}
		*list = grown;
		(*list)[*count] = mosquitto_strdup(tok);
		if((*list)[*count] == NULL){
			free(copy);
			return MOSQ_ERR_NOMEM;
		}
		(*count)++;
	}
	free(copy);
	return MOSQ_ERR_SUCCESS;
}

static void free_list(char **list, size_t count)
{
	for(size_t i = 0; i < count; i++) mosquitto_free(list[i]);
	mosquitto_free(list);
}

static int parse_bool(const char *key, const char *value, bool *out)
{
	if(!strcasecmp(value, "on") || !strcasecmp(value, "true")){
		*out = true;
	}else if(!strcasecmp(value, "off") || !strcasecmp(value, "false")){
		*out = false;
	}else{
		mosquitto_log_printf(MOSQ_LOG_ERR, PLUGIN_NAME ": plugin_opt_%s takes on or off, not '%s'", key, value);
		return MOSQ_ERR_INVAL;
	}
	return MOSQ_ERR_SUCCESS;
}

static int parse_access(const char *value, bool *allow)
{
	if(!strcasecmp(value, "defer")){
		*allow = false;
	}else if(!strcasecmp(value, "allow")){
		*allow = true;
	}else{
		mosquitto_log_printf(MOSQ_LOG_ERR, PLUGIN_NAME ": plugin_opt_access takes defer or allow, not '%s'", value);
		return MOSQ_ERR_INVAL;
	}
	return MOSQ_ERR_SUCCESS;
}

static int parse_seconds(const char *key, const char *value, int *out)
{
	char *end = NULL;
	long n = strtol(value, &end, 10);

	if(end == value || *end != '\0' || n < 0 || n > 86400){
		mosquitto_log_printf(MOSQ_LOG_ERR, PLUGIN_NAME ": plugin_opt_%s takes whole seconds from 0 to 86400, not '%s'", key, value);
		return MOSQ_ERR_INVAL;
	}
	*out = (int)n;
	return MOSQ_ERR_SUCCESS;
}

static int parse_option(const struct mosquitto_opt *opt, const char **topic)
{
	if(!strcasecmp(opt->key, "fields")) return parse_fields(opt->value, &config.fields);
	if(!strcasecmp(opt->key, "events")) return parse_bool(opt->key, opt->value, &config.events);
	if(!strcasecmp(opt->key, "clients")) return parse_bool(opt->key, opt->value, &config.clients);
	if(!strcasecmp(opt->key, "dynsec_batch_saves")) return parse_bool(opt->key, opt->value, &config.dynsec_batch_saves);
	if(!strcasecmp(opt->key, "access")) return parse_access(opt->value, &config.allow);
	if(!strcasecmp(opt->key, "control_users")) return parse_list(opt->value, &config.control_users, &config.control_user_count);
	if(!strcasecmp(opt->key, "share_exempt")) return parse_list(opt->value, &config.share_exempt, &config.share_exempt_count);
	if(!strcasecmp(opt->key, "share_wait")) return parse_seconds(opt->key, opt->value, &config.share_wait_s);
	if(!strcasecmp(opt->key, "share_state")){
		if(opt->value[0] != '/'){
			mosquitto_log_printf(MOSQ_LOG_ERR, PLUGIN_NAME ": plugin_opt_share_state takes an absolute path, not '%s'", opt->value);
			return MOSQ_ERR_INVAL;
		}
		config.share_state = mosquitto_strdup(opt->value);
		return config.share_state != NULL ? MOSQ_ERR_SUCCESS : MOSQ_ERR_NOMEM;
	}
	if(!strcasecmp(opt->key, "events_topic")){
		*topic = opt->value;
		if(mosquitto_pub_topic_check(*topic) != MOSQ_ERR_SUCCESS){
			mosquitto_log_printf(MOSQ_LOG_ERR, PLUGIN_NAME ": plugin_opt_events_topic '%s' is no topic to publish on", *topic);
			return MOSQ_ERR_INVAL;
		}
		return MOSQ_ERR_SUCCESS;
	}
	mosquitto_log_printf(MOSQ_LOG_WARNING, PLUGIN_NAME ": unknown option plugin_opt_%s ignored", opt->key);
	return MOSQ_ERR_SUCCESS;
}

static bool is_control_filter(const char *topic)
{
	return !strncmp(topic, "$CONTROL/mqtt-operator/", strlen("$CONTROL/mqtt-operator/"));
}

/*
 * Every ACL check while `plugin_opt_clients on`. The control topics are decided here (only the
 * control users publish requests and read answers), a delivery `unsubscribeClient` revoked is denied,
 * subscriptions are recorded; everything else goes on to dynamic security (or is allowed when the
 * plugin is the only one).
 */
static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	int rc;

	(void)event;
	(void)userdata;
	if(ed->topic[0] == '$' && is_control_filter(ed->topic)){
		if(ed->access == MOSQ_ACL_WRITE){
			return control_user(ed->client) && !strcmp(ed->topic, CONTROL_TOPIC) ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
		}
		if(!control_user(ed->client) || strcmp(ed->topic, CONTROL_RESPONSE_TOPIC)){
			return MOSQ_ERR_ACL_DENIED;
		}
		clients_on_acl(ed);
		return MOSQ_ERR_SUCCESS;
	}
	rc = clients_on_acl(ed);
	if(rc != MOSQ_ERR_PLUGIN_DEFER) return rc;
	return config.allow ? MOSQ_ERR_SUCCESS : MOSQ_ERR_PLUGIN_DEFER;
}

/* The end of every pass of the broker's loop: logins let in, the shared-subscription record, the
 * dynamic-security save a batch of commands left due. */
static int on_tick(int event, void *event_data, void *userdata)
{
	if(config.clients) clients_on_tick(event, event_data, userdata);
	dynsec_save_flush();
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for(int i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

struct registration {
	int event;
	MOSQ_FUNC_generic_callback callback;
	const void *event_data;
};

/* What is registered, in order: the stamps always; the client table, its events and the control
 * topic only with plugin_opt_clients on; disconnect events alone otherwise. */
static size_t registrations(struct registration out[6])
{
	size_t n = 0;

	out[n++] = (struct registration){MOSQ_EVT_MESSAGE, stamp_on_message, NULL};
	if(config.clients){
		out[n++] = (struct registration){MOSQ_EVT_BASIC_AUTH, clients_on_basic_auth, NULL};
		out[n++] = (struct registration){MOSQ_EVT_ACL_CHECK, on_acl_check, NULL};
		out[n++] = (struct registration){MOSQ_EVT_CONTROL, control_on_request, CONTROL_TOPIC};
	}
	if(config.clients || config.dynsec_batch_saves){
		out[n++] = (struct registration){MOSQ_EVT_TICK, on_tick, NULL};
	}
	out[n++] = (struct registration){MOSQ_EVT_DISCONNECT, clients_on_disconnect, NULL};
	return n;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **user_data, struct mosquitto_opt *opts, int opt_count)
{
	const char *topic = DEFAULT_EVENTS_TOPIC;
	struct registration regs[6];
	size_t n;
	int rc;

	(void)user_data;
	plugin_id = identifier;
	rc = stamp_check_layout();
	if(rc != MOSQ_ERR_SUCCESS) return rc;
	for(int i = 0; i < opt_count; i++){
		rc = parse_option(&opts[i], &topic);
		if(rc != MOSQ_ERR_SUCCESS) return rc;
	}
	config.events_topic = mosquitto_strdup(topic);
	if(config.events_topic == NULL) return MOSQ_ERR_NOMEM;
	if(config.share_state != NULL && !config.clients){
		/* The record is made from the client table. */
		mosquitto_log_printf(MOSQ_LOG_WARNING, PLUGIN_NAME ": plugin_opt_share_state needs plugin_opt_clients on: ignored");
		mosquitto_free(config.share_state);
		config.share_state = NULL;
	}

	mosquitto_log_printf(MOSQ_LOG_INFO, PLUGIN_NAME ": stamping%s%s%s%s%s; client events %s%s; clients %s%s",
		config.fields & FIELD_CLIENT_ID ? " clientId" : "",
		config.fields & FIELD_ADDRESS ? " clientAddress" : "",
		config.fields & FIELD_MESSAGE_ID ? " messageId" : "",
		config.fields & FIELD_TIME ? " receivedAt" : "",
		config.fields ? "" : " nothing",
		config.events ? "on " : "off",
		config.events ? config.events_topic : "",
		config.clients ? "tracked, control on " CONTROL_TOPIC : "not tracked",
		config.clients && config.allow ? " (access allow: no other auth plugin)" : "");

	if(config.share_state != NULL){
		mosquitto_log_printf(MOSQ_LOG_INFO, PLUGIN_NAME ": shared subscriptions of persistent sessions recorded in %s; held for at most %d s after a start",
			config.share_state, config.share_wait_s);
	}
	if(config.dynsec_batch_saves){
		mosquitto_log_printf(MOSQ_LOG_INFO, PLUGIN_NAME ": dynamic-security saves batched, one per pass of the broker's loop (when the broker's build lets the plugin's calls reach ours)");
	}
	rc = shares_start();
	if(rc != MOSQ_ERR_SUCCESS) return rc;
	n = registrations(regs);
	for(size_t i = 0; i < n; i++){
		rc = mosquitto_callback_register(plugin_id, regs[i].event, regs[i].callback, regs[i].event_data, NULL);
		if(rc != MOSQ_ERR_SUCCESS) return rc;
	}
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_cleanup(void *user_data, struct mosquitto_opt *opts, int opt_count)
{
	struct registration regs[6];
	size_t n = registrations(regs);

	(void)user_data;
	(void)opts;
	(void)opt_count;
	for(size_t i = 0; i < n; i++){
		mosquitto_callback_unregister(plugin_id, regs[i].event, regs[i].callback, regs[i].event_data);
	}
	dynsec_save_flush(); /* first: dynamic security, loaded after us, is cleaned up after us */
	shares_cleanup();   /* a last change is written from the client table */
	clients_cleanup();
	free_list(config.control_users, config.control_user_count);
	free_list(config.share_exempt, config.share_exempt_count);
	mosquitto_free(config.events_topic);
	mosquitto_free(config.share_state);
	config = (struct plugin_config){DEFAULT_FIELDS, true, NULL, false, false, NULL, 0, NULL, DEFAULT_SHARE_WAIT_S, NULL, 0, false};
	return MOSQ_ERR_SUCCESS;
}
