/*
 * mqtt_operator_stamp: a Mosquitto 2.0 plugin (plugin API v5) of mqtt-operator.
 *
 * On every PUBLISH the broker receives (MOSQ_EVT_MESSAGE) it removes any incoming user property whose
 * name starts with "mqtt-operator/" (any letter case), then appends the stamps chosen by
 * `plugin_opt_fields` (a comma-separated list of clientid, address, messageid, time; default
 * clientid,address,messageid):
 *
 *   mqtt-operator/clientId       the publisher's client id            (mosquitto_client_id)
 *   mqtt-operator/clientAddress  the publisher's IP address, no port  (mosquitto_client_address)
 *   mqtt-operator/messageId      a UUIDv7 (RFC 9562): 48-bit ms time, 12-bit counter, 62 random bits
 *   mqtt-operator/receivedAt     the broker's receive time, ms since the epoch, decimal
 *
 * On every client disconnect (MOSQ_EVT_DISCONNECT) of a client that had connected, it publishes a JSON
 * event on `plugin_opt_events_topic` (default $SYS/mqtt-operator/client-events; `plugin_opt_events
 * off` turns it off). Mosquitto 2.0 has no connect event: see docs/broker-plugin.md.
 *
 * Builds against the headers of Mosquitto 2.0.11 (tests) and 2.0.21 (the broker image); the broker
 * exports every mosquitto_* function used here, so the plugin links no library.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>
#include <mqtt_protocol.h>

#define STAMP_PREFIX "mqtt-operator/"
#define PROP_CLIENT_ID STAMP_PREFIX "clientId"
#define PROP_ADDRESS STAMP_PREFIX "clientAddress"
#define PROP_MESSAGE_ID STAMP_PREFIX "messageId"
#define PROP_RECEIVED_AT STAMP_PREFIX "receivedAt"
#define DEFAULT_EVENTS_TOPIC "$SYS/mqtt-operator/client-events"

enum {
	FIELD_CLIENT_ID = 1 << 0,
	FIELD_ADDRESS = 1 << 1,
	FIELD_MESSAGE_ID = 1 << 2,
	FIELD_TIME = 1 << 3,
};
#define DEFAULT_FIELDS (FIELD_CLIENT_ID | FIELD_ADDRESS | FIELD_MESSAGE_ID)

struct stamp_config {
	unsigned fields;
	bool events;
	char *events_topic;
};

static mosquitto_plugin_id_t *plugin_id = NULL;
static struct stamp_config config = {DEFAULT_FIELDS, true, NULL};

/* The broker runs plugin callbacks on its one main thread: no locking. */
static uint64_t last_ms = 0;
static uint16_t counter = 0;
static uint8_t random_pool[256];
static size_t random_left = 0;

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int random_bytes(uint8_t *out, size_t len)
{
	if(random_left < len){
		size_t got = 0;
		while(got < sizeof(random_pool)){
			ssize_t n = getrandom(random_pool + got, sizeof(random_pool) - got, 0);
			if(n < 0){
				if(errno == EINTR) continue;
				return MOSQ_ERR_UNKNOWN;
			}
			got += (size_t)n;
		}
		random_left = sizeof(random_pool);
	}
	memcpy(out, random_pool + sizeof(random_pool) - random_left, len);
	random_left -= len;
	return MOSQ_ERR_SUCCESS;
}

/* A UUIDv7 as 36 characters: strictly increasing within this broker process (a 12-bit counter in
 * rand_a, the time moved on by a millisecond when it wraps, never backwards when the clock is set
 * back), and 62 random bits that keep ids of different broker runs apart. */
static int message_id(int64_t received_ms, char out[37])
{
	uint8_t b[16];
	uint64_t ms = received_ms > 0 ? (uint64_t)received_ms : 0;

	if(ms > last_ms){
		last_ms = ms;
		counter = 0;
	}else if(counter == 0x0fff){
		last_ms++;
		counter = 0;
	}else{
		counter++;
	}
	ms = last_ms;
	for(int i = 0; i < 6; i++){
		b[i] = (uint8_t)(ms >> (40 - 8 * i));
	}
	b[6] = (uint8_t)(0x70 | ((counter >> 8) & 0x0f));
	b[7] = (uint8_t)(counter & 0xff);
	if(random_bytes(b + 8, 8) != MOSQ_ERR_SUCCESS){
		return MOSQ_ERR_UNKNOWN;
	}
	b[8] = (uint8_t)(0x80 | (b[8] & 0x3f));
	snprintf(out, 37,
		"%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
		b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
		b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
	return MOSQ_ERR_SUCCESS;
}

static bool has_prefix(const char *name)
{
	return name != NULL && strncasecmp(name, STAMP_PREFIX, strlen(STAMP_PREFIX)) == 0;
}

static bool is_forged(const mosquitto_property *prop)
{
	char *name = NULL, *value = NULL;
	bool forged;

	if(mosquitto_property_identifier(prop) != MQTT_PROP_USER_PROPERTY){
		return false;
	}
	if(mosquitto_property_read_string_pair(prop, MQTT_PROP_USER_PROPERTY, &name, &value, false) == NULL){
		return false;
	}
	forged = has_prefix(name);
	mosquitto_free(name);
	mosquitto_free(value);
	return forged;
}

/* Appends a copy of the one property `prop` to `dest`. */
static int copy_property(mosquitto_property **dest, const mosquitto_property *prop)
{
	int id = mosquitto_property_identifier(prop);
	int rc = MOSQ_ERR_SUCCESS;
	uint8_t u8;
	uint16_t u16;
	uint32_t u32;
	char *name = NULL, *value = NULL;
	void *data = NULL;

	switch(id){
		case MQTT_PROP_PAYLOAD_FORMAT_INDICATOR:
			mosquitto_property_read_byte(prop, id, &u8, false);
			return mosquitto_property_add_byte(dest, id, u8);
		case MQTT_PROP_MESSAGE_EXPIRY_INTERVAL:
			mosquitto_property_read_int32(prop, id, &u32, false);
			return mosquitto_property_add_int32(dest, id, u32);
		case MQTT_PROP_TOPIC_ALIAS:
			mosquitto_property_read_int16(prop, id, &u16, false);
			return mosquitto_property_add_int16(dest, id, u16);
		case MQTT_PROP_SUBSCRIPTION_IDENTIFIER:
			mosquitto_property_read_varint(prop, id, &u32, false);
			return mosquitto_property_add_varint(dest, id, u32);
		case MQTT_PROP_CONTENT_TYPE:
		case MQTT_PROP_RESPONSE_TOPIC:
			if(mosquitto_property_read_string(prop, id, &value, false) == NULL) return MOSQ_ERR_NOMEM;
			rc = mosquitto_property_add_string(dest, id, value);
			mosquitto_free(value);
			return rc;
		case MQTT_PROP_CORRELATION_DATA:
			if(mosquitto_property_read_binary(prop, id, &data, &u16, false) == NULL) return MOSQ_ERR_NOMEM;
			rc = mosquitto_property_add_binary(dest, id, data, u16);
			mosquitto_free(data);
			return rc;
		case MQTT_PROP_USER_PROPERTY:
			if(mosquitto_property_read_string_pair(prop, id, &name, &value, false) == NULL) return MOSQ_ERR_NOMEM;
			rc = mosquitto_property_add_string_pair(dest, id, name, value);
			mosquitto_free(name);
			mosquitto_free(value);
			return rc;
		default:
			/* No other property belongs on a PUBLISH the broker has accepted: drop it. */
			return MOSQ_ERR_SUCCESS;
	}
}

/* Replaces *props by a copy without the forged (prefixed) user properties, keeping the order. */
static int strip_forged(mosquitto_property **props)
{
	const mosquitto_property *p;
	mosquitto_property *kept = NULL;
	bool any = false;
	int rc;

	for(p = *props; p != NULL; p = mosquitto_property_next(p)){
		if(is_forged(p)){
			any = true;
			break;
		}
	}
	if(!any){
		return MOSQ_ERR_SUCCESS;
	}
	for(p = *props; p != NULL; p = mosquitto_property_next(p)){
		if(is_forged(p)) continue;
		rc = copy_property(&kept, p);
		if(rc != MOSQ_ERR_SUCCESS){
			mosquitto_property_free_all(&kept);
			return rc;
		}
	}
	mosquitto_property_free_all(props);
	*props = kept;
	return MOSQ_ERR_SUCCESS;
}

static int on_message(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_message *ed = event_data;
	int64_t received = now_ms();
	char buf[37];
	const char *s;
	int rc;

	(void)event;
	(void)userdata;

	rc = strip_forged(&ed->properties);
	if(rc != MOSQ_ERR_SUCCESS) return rc;

	if(config.fields & FIELD_CLIENT_ID){
		s = mosquitto_client_id(ed->client);
		rc = mosquitto_property_add_string_pair(&ed->properties, MQTT_PROP_USER_PROPERTY, PROP_CLIENT_ID, s ? s : "");
		if(rc != MOSQ_ERR_SUCCESS) return rc;
	}
	if(config.fields & FIELD_ADDRESS){
		s = mosquitto_client_address(ed->client);
		rc = mosquitto_property_add_string_pair(&ed->properties, MQTT_PROP_USER_PROPERTY, PROP_ADDRESS, s ? s : "");
		if(rc != MOSQ_ERR_SUCCESS) return rc;
	}
	if(config.fields & FIELD_MESSAGE_ID){
		rc = message_id(received, buf);
		if(rc != MOSQ_ERR_SUCCESS) return rc;
		rc = mosquitto_property_add_string_pair(&ed->properties, MQTT_PROP_USER_PROPERTY, PROP_MESSAGE_ID, buf);
		if(rc != MOSQ_ERR_SUCCESS) return rc;
	}
	if(config.fields & FIELD_TIME){
		snprintf(buf, sizeof(buf), "%lld", (long long)received);
		rc = mosquitto_property_add_string_pair(&ed->properties, MQTT_PROP_USER_PROPERTY, PROP_RECEIVED_AT, buf);
		if(rc != MOSQ_ERR_SUCCESS) return rc;
	}
	return MOSQ_ERR_SUCCESS;
}

/* Appends `s` as a JSON string (or null) to buf at *len; returns false when it does not fit. */
static bool json_string(char *buf, size_t size, size_t *len, const char *s)
{
	int n;

	if(s == NULL){
		n = snprintf(buf + *len, size - *len, "null");
		if(n < 0 || (size_t)n >= size - *len) return false;
		*len += (size_t)n;
		return true;
	}
	if(*len + 1 >= size) return false;
	buf[(*len)++] = '"';
	for(const unsigned char *c = (const unsigned char *)s; *c; c++){
		if(*c == '"' || *c == '\\'){
			if(*len + 2 >= size) return false;
			buf[(*len)++] = '\\';
			buf[(*len)++] = (char)*c;
		}else if(*c < 0x20){
			if(*len + 6 >= size) return false;
			*len += (size_t)snprintf(buf + *len, size - *len, "\\u%04x", *c);
		}else{
			if(*len + 1 >= size) return false;
			buf[(*len)++] = (char)*c;
		}
	}
	if(*len + 1 >= size) return false;
	buf[(*len)++] = '"';
	buf[*len] = '\0';
	return true;
}

/* Appends printf-formatted text to buf at *len; false when it does not fit. */
static bool append(char *buf, size_t size, size_t *len, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf + *len, size - *len, fmt, ap);
	va_end(ap);
	if(n < 0 || (size_t)n >= size - *len) return false;
	*len += (size_t)n;
	return true;
}

static int on_disconnect(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_disconnect *ed = event_data;
	const char *id = mosquitto_client_id(ed->client);
	char payload[2048];
	size_t len = 0;
	bool ok;

	(void)event;
	(void)userdata;

	/* A refused CONNECT has no client id left by the time of this event: nothing had connected. */
	if(!config.events || id == NULL){
		return MOSQ_ERR_SUCCESS;
	}
	ok = append(payload, sizeof(payload), &len, "{\"event\":\"disconnect\",\"timestampMs\":%lld,\"clientId\":",
			(long long)now_ms())
		&& json_string(payload, sizeof(payload), &len, id)
		&& append(payload, sizeof(payload), &len, ",\"address\":")
		&& json_string(payload, sizeof(payload), &len, mosquitto_client_address(ed->client))
		&& append(payload, sizeof(payload), &len, ",\"username\":")
		&& json_string(payload, sizeof(payload), &len, mosquitto_client_username(ed->client))
		/* Mosquitto 2.0 always passes -1: why the client went (DISCONNECT packet, lost socket,
		 * keep-alive timeout, take-over) is only in the broker's log line. */
		&& (ed->reason < 0
			? append(payload, sizeof(payload), &len, ",\"reason\":null}")
			: append(payload, sizeof(payload), &len, ",\"reason\":%d}", ed->reason));
	if(!ok){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "mqtt_operator_stamp: the disconnect event of %s is too long, not published", id);
		return MOSQ_ERR_SUCCESS;
	}
	mosquitto_broker_publish_copy(NULL, config.events_topic, (int)len, payload, 0, false, NULL);
	return MOSQ_ERR_SUCCESS;
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
				"mqtt_operator_stamp: unknown field '%s' in plugin_opt_fields (known: clientid, address, messageid, time, none)", tok);
			free(copy);
			return MOSQ_ERR_INVAL;
		}
	}
	free(copy);
	*fields = out;
	return MOSQ_ERR_SUCCESS;
}

static int parse_bool(const char *key, const char *value, bool *out)
{
	if(!strcasecmp(value, "on") || !strcasecmp(value, "true")){
		*out = true;
	}else if(!strcasecmp(value, "off") || !strcasecmp(value, "false")){
		*out = false;
	}else{
		mosquitto_log_printf(MOSQ_LOG_ERR, "mqtt_operator_stamp: plugin_opt_%s takes on or off, not '%s'", key, value);
		return MOSQ_ERR_INVAL;
	}
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for(int i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **user_data, struct mosquitto_opt *opts, int opt_count)
{
	const char *topic = DEFAULT_EVENTS_TOPIC;
	int rc;

	(void)user_data;
	plugin_id = identifier;
	config.fields = DEFAULT_FIELDS;
	config.events = true;
	for(int i = 0; i < opt_count; i++){
		if(!strcasecmp(opts[i].key, "fields")){
			rc = parse_fields(opts[i].value, &config.fields);
		}else if(!strcasecmp(opts[i].key, "events")){
			rc = parse_bool(opts[i].key, opts[i].value, &config.events);
		}else if(!strcasecmp(opts[i].key, "events_topic")){
			topic = opts[i].value;
			rc = MOSQ_ERR_SUCCESS;
			if(mosquitto_pub_topic_check(topic) != MOSQ_ERR_SUCCESS){
				mosquitto_log_printf(MOSQ_LOG_ERR, "mqtt_operator_stamp: plugin_opt_events_topic '%s' is no topic to publish on", topic);
				rc = MOSQ_ERR_INVAL;
			}
		}else{
			mosquitto_log_printf(MOSQ_LOG_WARNING, "mqtt_operator_stamp: unknown option plugin_opt_%s ignored", opts[i].key);
			rc = MOSQ_ERR_SUCCESS;
		}
		if(rc != MOSQ_ERR_SUCCESS) return rc;
	}
	config.events_topic = mosquitto_strdup(topic);
	if(config.events_topic == NULL) return MOSQ_ERR_NOMEM;

	mosquitto_log_printf(MOSQ_LOG_INFO, "mqtt_operator_stamp: stamping%s%s%s%s%s; disconnect events %s%s",
		config.fields & FIELD_CLIENT_ID ? " clientId" : "",
		config.fields & FIELD_ADDRESS ? " clientAddress" : "",
		config.fields & FIELD_MESSAGE_ID ? " messageId" : "",
		config.fields & FIELD_TIME ? " receivedAt" : "",
		config.fields ? "" : " nothing",
		config.events ? "on " : "off",
		config.events ? config.events_topic : "");

	rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_MESSAGE, on_message, NULL, NULL);
	if(rc != MOSQ_ERR_SUCCESS) return rc;
	return mosquitto_callback_register(plugin_id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL, NULL);
}

int mosquitto_plugin_cleanup(void *user_data, struct mosquitto_opt *opts, int opt_count)
{
	(void)user_data;
	(void)opts;
	(void)opt_count;
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_MESSAGE, on_message, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL);
	mosquitto_free(config.events_topic);
	config.events_topic = NULL;
	return MOSQ_ERR_SUCCESS;
}
