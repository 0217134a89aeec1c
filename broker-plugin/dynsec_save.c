/*
 * One dynamic-security save per pass of the broker's loop, instead of one per command.
 *
 * Mosquitto 2.0's dynamic-security plugin rewrites its whole JSON file (every client with its password
 * hash base64-encoded anew, every role) after each command, even for a batch of commands in one
 * request: 3 commands an account, so N accounts cost O(N^2). With 5,000 accounts the file is 4 MB and
 * the broker spent minutes at 100% CPU in that function (docs/broker-plugin.md has the figures).
 *
 * The plugin calls `dynsec__config_save` through its PLT, and Mosquitto loads every plugin with
 * RTLD_GLOBAL, in the order of mosquitto.conf; ours comes first, so this definition is the one its calls
 * reach (symbol interposition, as the dynamic linker does for any global symbol). It only notes that a
 * save is due; `dynsec_save_flush`, at the next TICK (the end of the same pass of the broker's loop,
 * after the whole request was handled), calls the real one, found among the loaded objects. A broker
 * killed in between loses that batch from the file (it is the broker's own state that a crash loses,
 * as with its autosave; the operator's drift repair puts it back).
 *
 * Off unless plugin_opt_dynsec_batch_saves is on: then every call saves at once, as if this file did not
 * exist. A Mosquitto built so that the plugin calls its own function directly never reaches this: its
 * saves stay per command, and the log never shows the "deferring" line.
 */
#include <dlfcn.h>
#include <link.h>

#include "plugin.h"

typedef void (*save_fn)(void);

static save_fn real_save = NULL;
static bool due = false;
static bool announced = false;
static uint64_t deferred = 0;   /* calls folded into the saves made */
static uint64_t saves = 0;

void dynsec__config_save(void);

/* dl_iterate_phdr: the first loaded object other than ours that defines the function. dlsym(RTLD_NEXT)
 * does not reach it: objects dlopen'ed after the caller are not "next" to it. */
static int find_in_object(struct dl_phdr_info *info, size_t size, void *found)
{
	void *handle, *sym;

	(void)size;
	if(info->dlpi_name == NULL || info->dlpi_name[0] == '\0') return 0;
	handle = dlopen(info->dlpi_name, RTLD_LAZY | RTLD_NOLOAD);
	if(handle == NULL) return 0;
	sym = dlsym(handle, "dynsec__config_save");
	dlclose(handle);
	if(sym == NULL || sym == (void *)(uintptr_t)dynsec__config_save) return 0;
	*(save_fn *)found = (save_fn)(uintptr_t)sym;
	return 1;
}

static save_fn find_real(void)
{
	if(real_save == NULL){
		dl_iterate_phdr(find_in_object, &real_save);
		if(real_save == NULL){
			mosquitto_log_printf(MOSQ_LOG_ERR, PLUGIN_NAME ": dynsec__config_save called, but no other loaded object defines it: nothing saved");
		}
	}
	return real_save;
}

/* Interposes the dynamic-security plugin's function of the same name. */
void dynsec__config_save(void)
{
	save_fn save;

	if(config.dynsec_batch_saves){
		if(!announced){
			announced = true;
			mosquitto_log_printf(MOSQ_LOG_INFO, PLUGIN_NAME ": deferring dynamic-security saves to one per pass of the broker's loop");
		}
		due = true;
		deferred++;
		return;
	}
	save = find_real();
	if(save != NULL) save();
}

void dynsec_save_flush(void)
{
	save_fn save;

	if(!due) return;
	due = false;
	save = find_real();
	if(save == NULL) return;
	save();
	saves++;
	/* A hint of what batching does, without a line per request. */
	if((saves & (saves - 1)) == 0){
		mosquitto_log_printf(MOSQ_LOG_DEBUG, PLUGIN_NAME ": %llu dynamic-security save(s) made for %llu command(s)",
			(unsigned long long)saves, (unsigned long long)deferred);
	}
}
