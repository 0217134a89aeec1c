/*
 * The admin's request/response interface, shaped like dynamic security's: a client whose username is
 * in plugin_opt_control_users publishes {"commands": [...]} on $CONTROL/mqtt-operator/v1 and gets
 * {"responses": [...]} on $CONTROL/mqtt-operator/v1/response, one per command, in order, each with
 * the command's name, its correlationData when it had one, and either "data" or "error".
 *
 *   listClients        {"offset": 0, "limit": 1000, "match": "car-*", "onlineOnly": false}
 *                                                                      clients (and offline sessions) by id
 *   getClient          {"clientId": "car-17"}                          one record and its subscriptions
 *   kickClient         {"clientId": "car-17", "sendWill": false}       disconnect it now
 *   unsubscribeClient  {"clientId": "car-17", "topicFilter": "cmd/#"}  stop deliveries on that filter
 *   publish            {"topic", "payload", "payloadEncoding": "base64", "qos", "retain",
 *                       "userProperties": [{"name", "value"}], "clientId": only to that client}
 *
 * The ACL check in plugin.c keeps everyone else off both topics.
 */
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <mqtt_protocol.h>

#include "plugin.h"

#define LIST_LIMIT_DEFAULT 1000
#define LIST_LIMIT_MAX 10000

bool control_user(const struct mosquitto *client)
{
	const char *username = mosquitto_client_username(client);

	if(username == NULL) return false;
	for(size_t i = 0; i < config.control_user_count; i++){
		if(!strcmp(config.control_users[i], username)) return true;
	}
	return false;
}

static const char *string_field(const cJSON *cmd, const char *name)
{
	const cJSON *item = cJSON_GetObjectItemCaseSensitive(cmd, name);
	return cJSON_IsString(item) ? item->valuestring : NULL;
}

/* A whole number in [min, max] or `fallback` when absent; -1 when present but not such a number. */
static long long number_field(const cJSON *cmd, const char *name, long long fallback, long long min, long long max)
{
	const cJSON *item = cJSON_GetObjectItemCaseSensitive(cmd, name);

	if(item == NULL) return fallback;
	if(!cJSON_IsNumber(item) || item->valuedouble != (double)(long long)item->valuedouble
			|| item->valuedouble < (double)min || item->valuedouble > (double)max){
		return -1;
	}
	return (long long)item->valuedouble;
}

static bool bool_field(const cJSON *cmd, const char *name, bool fallback, bool *ok)
{
	const cJSON *item = cJSON_GetObjectItemCaseSensitive(cmd, name);

	if(item == NULL) return fallback;
	if(!cJSON_IsBool(item)){
		*ok = false;
		return fallback;
	}
	return cJSON_IsTrue(item);
}

/* Each handler fills `data` and returns NULL, or returns the error text. */
typedef const char *(*handler)(const cJSON *cmd, cJSON *data, char *err, size_t err_size);

static const char *list_clients(const cJSON *cmd, cJSON *data, char *err, size_t err_size)
{
	long long offset = number_field(cmd, "offset", 0, 0, 1LL << 31);
	long long limit = number_field(cmd, "limit", LIST_LIMIT_DEFAULT, 1, LIST_LIMIT_MAX);
	const char *match = string_field(cmd, "match");
	bool ok = true, online_only = bool_field(cmd, "onlineOnly", false, &ok);
	struct client_rec **list;
	size_t count, total = 0, shown = 0;
	cJSON *clients;

	(void)err;
	(void)err_size;
	if(offset < 0) return "offset must be a whole number, 0 or more";
	if(limit < 0) return "limit must be a whole number from 1 to 10000";
	if(cJSON_GetObjectItemCaseSensitive(cmd, "match") != NULL && match == NULL) return "match must be a string";
	if(!ok) return "onlineOnly must be true or false";
	if(clients_list(online_only, &list, &count) != MOSQ_ERR_SUCCESS) return "out of memory";
	clients = cJSON_AddArrayToObject(data, "clients");
	for(size_t i = 0; i < count && clients != NULL; i++){
		if(match != NULL && fnmatch(match, list[i]->id, 0) != 0) continue;
		if(total++ < (size_t)offset || shown >= (size_t)limit) continue;
		cJSON_AddItemToArray(clients, clients_json(list[i], false));
		shown++;
	}
	mosquitto_free(list);
	cJSON_AddNumberToObject(data, "totalCount", (double)total);
	cJSON_AddNumberToObject(data, "offset", (double)offset);
	return clients == NULL ? "out of memory" : NULL;
}

static struct client_rec *named_client(const cJSON *cmd, char *err, size_t err_size)
{
	const char *id = string_field(cmd, "clientId");
	struct client_rec *rec;

	if(id == NULL){
		snprintf(err, err_size, "clientId (a string) is required");
		return NULL;
	}
	rec = clients_find(id);
	if(rec == NULL || rec->conn == NULL){
		snprintf(err, err_size, "client %s is not connected", id);
		return NULL;
	}
	return rec;
}

static const char *get_client(const cJSON *cmd, cJSON *data, char *err, size_t err_size)
{
	struct client_rec *rec = named_client(cmd, err, err_size);

	if(rec == NULL) return err;
	cJSON_AddItemToObject(data, "client", clients_json(rec, true));
	return NULL;
}

static const char *kick_client(const cJSON *cmd, cJSON *data, char *err, size_t err_size)
{
	struct client_rec *rec = named_client(cmd, err, err_size);
	bool ok = true, send_will = bool_field(cmd, "sendWill", false, &ok);

	if(!ok) return "sendWill must be true or false";
	if(rec == NULL) return err;
	cJSON_AddStringToObject(data, "clientId", rec->id);
	/* MQTT 5 clients get DISCONNECT with reason 0x98 (administrative action) first. */
	if(mosquitto_kick_client_by_clientid(rec->id, send_will) != MOSQ_ERR_SUCCESS){
		snprintf(err, err_size, "client %s is not connected", rec->id);
		return err;
	}
	return NULL;
}

static const char *unsubscribe_client(const cJSON *cmd, cJSON *data, char *err, size_t err_size)
{
	struct client_rec *rec = named_client(cmd, err, err_size);
	const char *filter = string_field(cmd, "topicFilter");
	int rc;

	if(rec == NULL) return err;
	if(filter == NULL) return "topicFilter (a string) is required";
	rc = clients_unsubscribe(rec, filter);
	if(rc == MOSQ_ERR_NOT_FOUND){
		snprintf(err, err_size, "client %s has no subscription %s that the plugin saw being made", rec->id, filter);
		return err;
	}
	if(rc != MOSQ_ERR_SUCCESS) return "out of memory";
	cJSON_AddStringToObject(data, "clientId", rec->id);
	cJSON_AddStringToObject(data, "topicFilter", filter);
	return NULL;
}

static int b64_value(unsigned char c)
{
	if(c >= 'A' && c <= 'Z') return c - 'A';
	if(c >= 'a' && c <= 'z') return c - 'a' + 26;
	if(c >= '0' && c <= '9') return c - '0' + 52;
	if(c == '+') return 62;
	if(c == '/') return 63;
	return -1;
}

/* Standard base64 with padding; *out is the caller's to free (mosquitto_free). */
static bool base64_decode(const char *in, unsigned char **out, size_t *out_len)
{
	size_t len = strlen(in), n = 0;
	unsigned char *buf;

	if(len % 4 != 0) return false;
	buf = mosquitto_malloc(len / 4 * 3 + 1);
	if(buf == NULL) return false;
	for(size_t i = 0; i < len; i += 4){
		bool last = i + 4 == len;
		bool pad2 = last && in[i + 2] == '=', pad3 = last && in[i + 3] == '=';
		int v[4];
		/* '=' only ends the last group, and "x=y" is no padding. */
		bool bad = pad2 && !pad3;
		for(int k = 0; k < 4 && !bad; k++){
			v[k] = (k == 2 && pad2) || (k == 3 && pad3) ? 0 : b64_value((unsigned char)in[i + k]);
			bad = v[k] < 0;
		}
		if(bad){
			mosquitto_free(buf);
			return false;
		}
		buf[n++] = (unsigned char)(v[0] << 2 | v[1] >> 4);
		if(!pad2) buf[n++] = (unsigned char)((v[1] & 0x0f) << 4 | v[2] >> 2);
		if(!pad3) buf[n++] = (unsigned char)((v[2] & 0x03) << 6 | v[3]);
	}
	*out = buf;
	*out_len = n;
	return true;
}

static const char *user_properties(const cJSON *cmd, mosquitto_property **props, char *err, size_t err_size)
{
	const cJSON *list = cJSON_GetObjectItemCaseSensitive(cmd, "userProperties"), *item;

	if(list == NULL) return NULL;
	if(!cJSON_IsArray(list)) return "userProperties must be a list of {\"name\", \"value\"}";
	cJSON_ArrayForEach(item, list){
		const char *name = string_field(item, "name"), *value = string_field(item, "value");
		if(name == NULL || value == NULL) return "userProperties must be a list of {\"name\", \"value\"}";
		if(!strncasecmp(name, STAMP_PREFIX, strlen(STAMP_PREFIX))){
			snprintf(err, err_size, "user property %s: names starting with " STAMP_PREFIX " are the broker's own", name);
			return err;
		}
		if(mosquitto_property_add_string_pair(props, MQTT_PROP_USER_PROPERTY, name, value) != MOSQ_ERR_SUCCESS){
			return "out of memory";
		}
	}
	return NULL;
}

static const char *publish(const cJSON *cmd, cJSON *data, char *err, size_t err_size)
{
	const char *topic = string_field(cmd, "topic"), *payload = string_field(cmd, "payload");
	const char *encoding = string_field(cmd, "payloadEncoding"), *target = string_field(cmd, "clientId");
	long long qos = number_field(cmd, "qos", 0, 0, 2);
	bool ok = true, retain = bool_field(cmd, "retain", false, &ok);
	mosquitto_property *props = NULL;
	unsigned char *bytes = NULL;
	size_t len;
	const char *problem;
	int rc;

	if(topic == NULL || mosquitto_pub_topic_check(topic) != MOSQ_ERR_SUCCESS){
		return "topic must be a topic name to publish on (no + or #)";
	}
	if(topic[0] == '$') return "topics starting with $ are the broker's own";
	if(cJSON_GetObjectItemCaseSensitive(cmd, "payload") != NULL && payload == NULL) return "payload must be a string";
	if(qos < 0) return "qos must be 0, 1 or 2";
	if(!ok) return "retain must be true or false";
	if(target != NULL && (clients_find(target) == NULL || clients_find(target)->conn == NULL)){
		snprintf(err, err_size, "client %s is not connected", target);
		return err;
	}
	if(payload == NULL) payload = "";
	if(encoding != NULL && strcmp(encoding, "base64")) return "payloadEncoding must be base64 when given";
	if(encoding != NULL){
		if(!base64_decode(payload, &bytes, &len)) return "payload is not valid base64";
	}else{
		len = strlen(payload);
	}
	problem = user_properties(cmd, &props, err, err_size);
	if(problem != NULL){
		mosquitto_property_free_all(&props);
		mosquitto_free(bytes);
		return problem;
	}
	rc = mosquitto_broker_publish_copy(target, topic, (int)len, bytes != NULL ? (void *)bytes : (void *)payload,
			(int)qos, retain, props);
	mosquitto_free(bytes);
	if(rc != MOSQ_ERR_SUCCESS){
		mosquitto_property_free_all(&props);
		return "the broker did not take the message (out of memory?)";
	}
	cJSON_AddStringToObject(data, "topic", topic);
	cJSON_AddNumberToObject(data, "payloadBytes", (double)len);
	return NULL;
}

static const struct {
	const char *name;
	handler fn;
} COMMANDS[] = {
	{"listClients", list_clients},
	{"getClient", get_client},
	{"kickClient", kick_client},
	{"unsubscribeClient", unsubscribe_client},
	{"publish", publish},
};

static cJSON *answer(const cJSON *cmd)
{
	cJSON *response = cJSON_CreateObject(), *data;
	const char *name = string_field(cmd, "command"), *problem = "unknown command";
	const cJSON *correlation = cJSON_GetObjectItemCaseSensitive(cmd, "correlationData");
	char err[512];

	if(response == NULL) return NULL;
	cJSON_AddStringToObject(response, "command", name != NULL ? name : "");
	if(correlation != NULL) cJSON_AddItemToObject(response, "correlationData", cJSON_Duplicate(correlation, true));
	data = cJSON_CreateObject();
	if(data == NULL){
		cJSON_Delete(response);
		return NULL;
	}
	for(size_t i = 0; name != NULL && i < sizeof(COMMANDS) / sizeof(COMMANDS[0]); i++){
		if(!strcmp(COMMANDS[i].name, name)){
			problem = COMMANDS[i].fn(cmd, data, err, sizeof(err));
			break;
		}
	}
	if(problem != NULL){
		cJSON_Delete(data);
		cJSON_AddStringToObject(response, "error", problem);
	}else{
		cJSON_AddItemToObject(response, "data", data);
	}
	return response;
}

static void respond(const struct mosquitto *client, cJSON *tree)
{
	char *payload = tree != NULL ? cJSON_PrintUnformatted(tree) : NULL;

	cJSON_Delete(tree);
	if(payload == NULL){
		mosquitto_log_printf(MOSQ_LOG_WARNING, PLUGIN_NAME ": out of memory answering %s", mosquitto_client_id(client));
		return;
	}
	mosquitto_broker_publish_copy(mosquitto_client_id(client), CONTROL_RESPONSE_TOPIC, (int)strlen(payload), payload, 0, false, NULL);
	cJSON_free(payload);
}

int control_on_request(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_control *ed = event_data;
	cJSON *request, *responses, *tree = cJSON_CreateObject(), *cmd;
	const cJSON *commands;

	(void)event;
	(void)userdata;
	if(tree == NULL) return MOSQ_ERR_NOMEM;
	responses = cJSON_AddArrayToObject(tree, "responses");
	request = cJSON_ParseWithLength(ed->payload, ed->payloadlen);
	commands = cJSON_GetObjectItemCaseSensitive(request, "commands");
	if(!cJSON_IsArray(commands)){
		cmd = cJSON_CreateObject();
		cJSON_AddStringToObject(cmd, "command", "");
		cJSON_AddStringToObject(cmd, "error", "the request must be JSON: {\"commands\": [{\"command\": ...}, ...]}");
		cJSON_AddItemToArray(responses, cmd);
	}else{
		cJSON_ArrayForEach(cmd, commands){
			cJSON_AddItemToArray(responses, answer(cmd));
		}
	}
	cJSON_Delete(request);
	respond(ed->client, tree);
	return MOSQ_ERR_SUCCESS;
}
