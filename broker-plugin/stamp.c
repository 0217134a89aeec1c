/*
 * The stamps: on every PUBLISH the broker receives (MOSQ_EVT_MESSAGE) this removes any incoming user
 * property whose name starts with "mqtt-operator/" (any letter case), then appends the stamps chosen
 * by `plugin_opt_fields` (clientid, address, messageid, time; default clientid,address,messageid):
 *
 *   mqtt-operator/clientId       the publisher's client id            (mosquitto_client_id)
 *   mqtt-operator/clientAddress  the publisher's IP address, no port  (mosquitto_client_address)
 *   mqtt-operator/messageId      a UUIDv7 (RFC 9562): 48-bit ms time, 12-bit counter, 62 random bits
 *   mqtt-operator/receivedAt     the broker's receive time, ms since the epoch, decimal
 *
 * Builds against the headers of Mosquitto 2.0.11 (tests) and 2.0.21 (the broker image); it calls only
 * mosquitto_* functions that both brokers export (2.0.21 exports fewer: see struct mqtt5__property
 * below).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include <mqtt_protocol.h>

#include "plugin.h"

#define PROP_CLIENT_ID STAMP_PREFIX "clientId"
#define PROP_ADDRESS STAMP_PREFIX "clientAddress"
#define PROP_MESSAGE_ID STAMP_PREFIX "messageId"
#define PROP_RECEIVED_AT STAMP_PREFIX "receivedAt"

/* The broker runs plugin callbacks on its one main thread: no locking. */
static uint64_t last_ms = 0;
static uint16_t counter = 0;
static uint8_t random_pool[256];
static size_t random_left = 0;

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
	/* Written out by hand: snprintf with sixteen %02x took 270 ns, most of the stamps' cost to the broker
	 * per message; this takes about 12. */
	static const char digits[] = "0123456789abcdef";
	int o = 0;
	for(int i = 0; i < 16; i++){
		if(i == 4 || i == 6 || i == 8 || i == 10) out[o++] = '-';
		out[o++] = digits[b[i] >> 4];
		out[o++] = digits[b[i] & 0x0f];
	}
	out[o] = '\0';
	return MOSQ_ERR_SUCCESS;
}

/*
 * Mosquitto's own property list node (lib/property_mosq.h, the same in 2.0.11 and 2.0.21). The public
 * headers only declare it; the broker of 2.0.21 exports no mosquitto_property_read_* / _next /
 * _identifier (its src/linker.syms lists only the _add_* functions and _free_all), so the plugin reads
 * the nodes itself. stamp_check_layout() proves this definition against the running broker at load
 * time, and the plugin refuses to load when it does not match.
 */
struct mqtt__string {
	char *v;
	uint16_t len;
};

struct mqtt5__property {
	struct mqtt5__property *next;
	union {
		uint8_t i8;
		uint16_t i16;
		uint32_t i32;
		uint32_t varint;
		struct mqtt__string bin;
		struct mqtt__string s;
	} value;
	struct mqtt__string name;
	int32_t identifier;
	bool client_generated;
};

static bool string_is(const struct mqtt__string *s, const char *expected)
{
	size_t len = strlen(expected);
	return s->v != NULL && s->len == len && memcmp(s->v, expected, len) == 0;
}

int stamp_check_layout(void)
{
	mosquitto_property *probe = NULL;
	bool ok;

	if(mosquitto_property_add_string_pair(&probe, MQTT_PROP_USER_PROPERTY, "probe-name", "probe-value") != MOSQ_ERR_SUCCESS
			|| mosquitto_property_add_string(&probe, MQTT_PROP_CONTENT_TYPE, "probe/type") != MOSQ_ERR_SUCCESS){
		mosquitto_property_free_all(&probe);
		return MOSQ_ERR_NOMEM;
	}
	ok = probe != NULL
		&& probe->identifier == MQTT_PROP_USER_PROPERTY
		&& string_is(&probe->name, "probe-name")
		&& string_is(&probe->value.s, "probe-value")
		&& probe->next != NULL
		&& probe->next->identifier == MQTT_PROP_CONTENT_TYPE
		&& string_is(&probe->next->value.s, "probe/type")
		&& probe->next->next == NULL;
	mosquitto_property_free_all(&probe);
	if(!ok){
		mosquitto_log_printf(MOSQ_LOG_ERR,
			PLUGIN_NAME ": this broker's property list differs from the one the plugin was written for (Mosquitto 2.0): not loading");
		return MOSQ_ERR_NOT_SUPPORTED;
	}
	return MOSQ_ERR_SUCCESS;
}

static bool is_forged(const mosquitto_property *prop)
{
	size_t len = strlen(STAMP_PREFIX);

	return prop->identifier == MQTT_PROP_USER_PROPERTY
		&& prop->name.v != NULL
		&& prop->name.len >= len
		&& strncasecmp(prop->name.v, STAMP_PREFIX, len) == 0;
}

/* Exchanges what two nodes hold, leaving each where it is in its list. */
static void swap_contents(mosquitto_property *a, mosquitto_property *b)
{
	struct mqtt5__property tmp = *a;
	mosquitto_property *a_next = a->next, *b_next = b->next;

	*a = *b;
	*b = tmp;
	a->next = a_next;
	b->next = b_next;
}

/* Frees every forged node after the head. */
static void unlink_forged_after(mosquitto_property *head)
{
	mosquitto_property **link = &head->next;

	while(*link != NULL){
		mosquitto_property *p = *link;
		if(is_forged(p)){
			*link = p->next;
			p->next = NULL;
			mosquitto_property_free_all(&p);
		}else{
			link = &p->next;
		}
	}
}

/*
 * Removes every forged (prefixed) user property, the others keeping their order, and never changes
 * the head pointer of a non-empty list: from 2.0.15 the broker frees the old list when a MESSAGE
 * callback leaves another head (src/plugin.c), before that it does not, so a new head would be a
 * double free on one and a leak on the other. A forged head swaps contents with the first node that
 * stays (or, when all are forged, with the first stamp: stamp_message() calls this again after adding
 * the stamps).
 */
static void strip_forged(mosquitto_property **props)
{
	mosquitto_property *head = *props, *keep;

	if(head == NULL) return;
	if(is_forged(head)){
		for(keep = head->next; keep != NULL && is_forged(keep); keep = keep->next);
		if(keep != NULL) swap_contents(head, keep);
	}
	unlink_forged_after(head);
}

/*
 * After strip_forged() and the stamps were added to a list that had held only forged properties: its
 * head is the one forged node left. The first stamp takes its place; with no stamps the list goes.
 */
static void drop_forged_head(mosquitto_property **props)
{
	mosquitto_property *head = *props, *gone;

	if(head->next != NULL){
		swap_contents(head, head->next);
		gone = head->next;
		head->next = gone->next;
		gone->next = NULL;
		mosquitto_property_free_all(&gone);
		return;
	}
#if LIBMOSQUITTO_VERSION_NUMBER >= 2000015
	*props = NULL; /* the broker frees the list it passed in */
#else
	mosquitto_property_free_all(props);
#endif
}

/* Appends the stamps config.fields asks for to *props. */
static int add_stamps(mosquitto_property **props, const struct mosquitto *client)
{
	int64_t received = now_ms();
	char buf[37];
	const char *s;
	int rc;

	if(config.fields & FIELD_CLIENT_ID){
		s = mosquitto_client_id(client);
		rc = mosquitto_property_add_string_pair(props, MQTT_PROP_USER_PROPERTY, PROP_CLIENT_ID, s ? s : "");
		if(rc != MOSQ_ERR_SUCCESS) return rc;
	}
	if(config.fields & FIELD_ADDRESS){
		s = mosquitto_client_address(client);
		rc = mosquitto_property_add_string_pair(props, MQTT_PROP_USER_PROPERTY, PROP_ADDRESS, s ? s : "");
		if(rc != MOSQ_ERR_SUCCESS) return rc;
	}
	if(config.fields & FIELD_MESSAGE_ID){
		rc = message_id(received, buf);
		if(rc != MOSQ_ERR_SUCCESS) return rc;
		rc = mosquitto_property_add_string_pair(props, MQTT_PROP_USER_PROPERTY, PROP_MESSAGE_ID, buf);
		if(rc != MOSQ_ERR_SUCCESS) return rc;
	}
	if(config.fields & FIELD_TIME){
		snprintf(buf, sizeof(buf), "%lld", (long long)received);
		rc = mosquitto_property_add_string_pair(props, MQTT_PROP_USER_PROPERTY, PROP_RECEIVED_AT, buf);
		if(rc != MOSQ_ERR_SUCCESS) return rc;
	}
	return MOSQ_ERR_SUCCESS;
}

int stamp_on_message(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_message *ed = event_data;
	bool forged_head;
	int rc;

	(void)event;
	(void)userdata;

	strip_forged(&ed->properties);
	/* Still a forged head: every property was forged, and only that node is left. */
	forged_head = ed->properties != NULL && is_forged(ed->properties);
	rc = add_stamps(&ed->properties, ed->client);
	if(forged_head) drop_forged_head(&ed->properties);
	return rc;
}

