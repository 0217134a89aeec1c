/*
 * mqtt-operator's Mosquitto 2.0 plugin (plugin API v5): what its modules share.
 *
 *   plugin.c   options, registration, the ACL_CHECK dispatch
 *   stamp.c    the user properties stamped on every PUBLISH (MOSQ_EVT_MESSAGE)
 *   clients.c  who is connected and what they subscribe to; connect/disconnect events
 *   control.c  the admin's request/response interface on $CONTROL/mqtt-operator/v1
 *   shares.c   shared subscriptions across a restart: their record, and holding clients until renewed
 *   dynsec_save.c  dynamic security's file saved once per pass of the broker's loop, not per command
 *
 * The broker runs every plugin callback on its one main thread: nothing here locks.
 * docs/broker-plugin.md describes the behaviour; this header only the seams between the files.
 */
#ifndef MQTT_OPERATOR_PLUGIN_H
#define MQTT_OPERATOR_PLUGIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>
#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#define PLUGIN_NAME "mqtt_operator_stamp"
#define STAMP_PREFIX "mqtt-operator/"
#define DEFAULT_EVENTS_TOPIC "$SYS/mqtt-operator/client-events"
#define CONTROL_TOPIC "$CONTROL/mqtt-operator/v1"
#define CONTROL_RESPONSE_TOPIC "$CONTROL/mqtt-operator/v1/response"

enum {
	FIELD_CLIENT_ID = 1 << 0,
	FIELD_ADDRESS = 1 << 1,
	FIELD_MESSAGE_ID = 1 << 2,
	FIELD_TIME = 1 << 3,
};
#define DEFAULT_SHARE_WAIT_S 60
#define DEFAULT_FIELDS (FIELD_CLIENT_ID | FIELD_ADDRESS | FIELD_MESSAGE_ID)

struct plugin_config {
	unsigned fields;        /* plugin_opt_fields */
	bool events;            /* plugin_opt_events */
	char *events_topic;     /* plugin_opt_events_topic */
	bool clients;           /* plugin_opt_clients: track clients, connect events, the control topic */
	bool allow;             /* plugin_opt_access allow: the broker's only auth plugin, lets all in */
	char **control_users;   /* plugin_opt_control_users: who may use CONTROL_TOPIC */
	size_t control_user_count;
	char *share_state;      /* plugin_opt_share_state: the record of shared subscriptions, or NULL */
	int share_wait_s;       /* plugin_opt_share_wait: how long at most clients are held after a start */
	char **share_exempt;    /* plugin_opt_share_exempt: client ids let in while holding (a sidecar's) */
	size_t share_exempt_count;
	bool dynsec_batch_saves; /* plugin_opt_dynsec_batch_saves: dynamic security saves once per loop pass */
};

extern struct plugin_config config;

int64_t now_ms(void);

/* stamp.c */
int stamp_check_layout(void);
int stamp_on_message(int event, void *event_data, void *userdata);

/* clients.c */
struct client_sub {
	char *filter;
	uint8_t qos;
};

struct client_rec {
	char *id;
	struct mosquitto *conn;    /* NULL while offline (a session the broker may still hold) */
	int64_t connected_ms;
	int64_t disconnected_ms;   /* 0 while online */
	char *address;
	char *username;
	int protocol_version;      /* 3, 4 or 5 */
	int keepalive;
	bool clean_start;
	struct client_sub *subs;
	size_t sub_count;
	size_t sub_cap;
	char **revoked;            /* filters `unsubscribeClient` took away, denied on delivery */
	size_t revoked_count;
};

void clients_cleanup(void);
int clients_on_basic_auth(int event, void *event_data, void *userdata);
int clients_on_disconnect(int event, void *event_data, void *userdata);
int clients_on_tick(int event, void *event_data, void *userdata);
/* From the ACL_CHECK dispatch: returns MOSQ_ERR_ACL_DENIED for a revoked delivery, else DEFER. */
int clients_on_acl(const struct mosquitto_evt_acl_check *ed);
struct client_rec *clients_find(const char *id);
/* The records (online clients, and offline sessions holding subscriptions unless online_only),
 * sorted by id: *out is an array the caller frees (mosquitto_free). */
int clients_list(bool online_only, struct client_rec ***out, size_t *count);
int clients_unsubscribe(struct client_rec *rec, const char *filter);
cJSON *clients_json(const struct client_rec *rec, bool with_subscriptions);

/* control.c */
int control_on_request(int event, void *event_data, void *userdata);
bool control_user(const struct mosquitto *client);

/* dynsec_save.c */
void dynsec_save_flush(void);

/* shares.c */
bool shares_is_shared(const char *filter);
int shares_start(void);
void shares_cleanup(void);
/* Whether a login may go on now (false while holding, unless a recorded holder or control user). */
bool shares_admit(const struct mosquitto *client, const char *username);
/* `client_id` subscribed `filter`: renews it while holding. */
void shares_renewed(const char *filter, const char *client_id);
/* The set of shared subscriptions of persistent sessions may have changed: written at the next TICK. */
void shares_changed(void);
void shares_on_tick(void);

#endif
