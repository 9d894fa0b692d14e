/* parleyctl - operator commands on a parleyd data directory.
 *   parleyctl stats --data DIR
 *       One JSON object: undelivered envelopes, de-duplication records, accounts,
 *       devices, one-time prekeys, the data file's pages and the inbox log's segments.
 *       Reads only; safe while parleyd runs (LMDB readers never block its writer, and
 *       the log's segments are read through read-only mappings).
 *   parleyctl check --data DIR
 *       Reads the whole inbox log, verifying every record's checksum and that every
 *       envelope's bytes are where its record says; one JSON object, and exit status 1
 *       if anything is damaged (a torn last record is not damage: it was never
 *       acknowledged).
 *   parleyctl provision --data DIR --count N --keys FILE [--first-phone +E164]
 *       Registers N accounts (phone numbers from --first-phone upwards, default
 *       +19990000000), each with a primary device: a fresh identity key, a random
 *       registration id and a signed prekey, exactly as Register stores them, 10,000
 *       per transaction. The devices' private identity keys go to FILE (0600), one line
 *       per device: "PHONE ACCOUNT_HEX DEVICE IDENTITY_PRIVATE_HEX REGISTRATION_ID".
 *       For load tests (parley-bench): thousands of devices without thousands of SMS
 *       codes. Run it while parleyd is stopped; numbers already registered are
 *       registered again (their old devices replaced). */
#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "inbox_log.h"
#include "ldb.h"
#include "primitives.h"

#define PROVISION_BATCH 10000

static int usage(void)
{
    fprintf(stderr, "usage: parleyctl stats --data DIR\n"
                    "       parleyctl check --data DIR\n"
                    "       parleyctl provision --data DIR --count N --keys FILE [--first-phone +E164]\n");
    return 2;
}

/* The inbox log of dir, read only. */
static int open_log(const char *dir, inbox_log **log, inbox_log_report *rep)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/inbox", dir);
    inbox_log_config cfg = {.readonly = true};
    int rc = inbox_log_open(log, path, &cfg, rep);
    if (rc != STORE_OK)
        fprintf(stderr, "parleyctl: cannot read the inbox log in %s: %s\n", path, store_strerror(rc));
    return rc;
}

static int cmd_stats(const char *dir)
{
    ldb *s;
    store_stats st;
    inbox_log *log;
    inbox_log_report rep;
    int rc = ldb_open_readonly(&s, dir);
    if (rc != STORE_OK) {
        fprintf(stderr, "parleyctl: cannot open the store in %s: %s\n", dir, store_strerror(rc));
        return 1;
    }
    rc = ldb_get_stats(s, &st);
    ldb_close(s);
    if (rc != STORE_OK) {
        fprintf(stderr, "parleyctl: cannot read the store: %s\n", store_strerror(rc));
        return 1;
    }
    if (open_log(dir, &log, &rep) != STORE_OK)
        return 1;
    inbox_log_stats ls;
    inbox_log_get_stats(log, &ls);
    inbox_log_close(log);
    printf("{\"inbox_envelopes\":%llu,\"inbox_bytes\":%llu,\"log_segments\":%llu,\"log_bytes\":%llu,"
           "\"dedup_records\":%llu,\"accounts\":%llu,\"devices\":%llu,"
           "\"prekeys\":%llu,\"pages_used\":%llu,\"pages_free\":%llu,\"page_size\":%u}\n",
           (unsigned long long)(ls.envelopes + st.inbox_envelopes), (unsigned long long)ls.bytes,
           (unsigned long long)ls.segments, (unsigned long long)ls.disk_bytes, (unsigned long long)st.dedup_records,
           (unsigned long long)st.accounts, (unsigned long long)st.devices, (unsigned long long)st.prekeys,
           (unsigned long long)st.pages_used, (unsigned long long)st.pages_free, st.page_size);
    return 0;
}

static int cmd_check(const char *dir)
{
    inbox_log *log;
    inbox_log_report rep;
    if (open_log(dir, &log, &rep) != STORE_OK)
        return 1;
    inbox_log_close(log);
    printf("{\"segments\":%llu,\"records\":%llu,\"envelopes\":%llu,\"torn_bytes\":%llu,\"damaged\":%llu,"
           "\"damaged_bytes\":%llu,\"misplaced\":%llu,\"seconds\":%.3f}\n",
           (unsigned long long)rep.segments, (unsigned long long)rep.records, (unsigned long long)rep.envelopes,
           (unsigned long long)rep.torn_bytes, (unsigned long long)rep.damaged,
           (unsigned long long)rep.damaged_bytes, (unsigned long long)rep.misplaced, rep.seconds);
    if (rep.damaged || rep.misplaced) {
        fprintf(stderr, "parleyctl: the inbox log is damaged: %llu stretches (%llu bytes) do not verify, %llu "
                        "envelopes' bytes are not where their records say\n",
                (unsigned long long)rep.damaged, (unsigned long long)rep.damaged_bytes,
                (unsigned long long)rep.misplaced);
        return 1;
    }
    return 0;
}

/* One device as Register makes it: identity, registration id, a signed prekey. A number
 * registered before has its old devices' inboxes dropped from the log. */
static int provision_one(ldb_batch *b, inbox_log *log, const char *phone, FILE *keys)
{
    ps_keypair id, spk;
    ps_keypair_generate(NULL, &id);
    ps_keypair_generate(NULL, &spk);
    store_device_record primary = {.device = 1, .registration_id = 1 + randombytes_uniform(16380)};
    memcpy(primary.identity_key, id.pub, STORE_KEY_LEN);
    store_signed_prekey sp = {.id = 1};
    memcpy(sp.key, spk.pub, STORE_KEY_LEN);
    uint8_t spk_wire[PS_PUBKEY_LEN], new_id[STORE_ACCOUNT_ID_LEN], account[STORE_ACCOUNT_ID_LEN];
    ps_pubkey_serialize(spk_wire, spk.pub);
    randombytes_buf(new_id, sizeof new_id);
    int rc = ps_xeddsa_sign(sp.signature, id.priv, spk_wire, sizeof spk_wire, NULL) == PS_OK ? STORE_OK
                                                                                            : STORE_INVALID;
    store_device d = {.device = 1};
    uint32_t replaced[STORE_MAX_DEVICES];
    size_t n_replaced = 0;
    if (rc == STORE_OK)
        rc = ldb_register(b, phone, new_id, &primary, account, replaced, &n_replaced);
    memcpy(d.account, account, STORE_ACCOUNT_ID_LEN);
    for (size_t i = 0; rc == STORE_OK && i < n_replaced; i++) {
        store_device old = {.device = replaced[i]};
        memcpy(old.account, account, STORE_ACCOUNT_ID_LEN);
        rc = inbox_log_take(log, &old, UINT64_MAX, NULL, NULL, NULL);
    }
    if (rc == STORE_OK)
        rc = ldb_signed_prekey_put(b, &d, &sp);
    char account_hex[2 * STORE_ACCOUNT_ID_LEN + 1], priv_hex[2 * PS_KEY_LEN + 1];
    sodium_bin2hex(account_hex, sizeof account_hex, account, sizeof account);
    sodium_bin2hex(priv_hex, sizeof priv_hex, id.priv, sizeof id.priv);
    if (rc == STORE_OK && fprintf(keys, "%s %s 1 %s %u\n", phone, account_hex, priv_hex,
                                  (unsigned)primary.registration_id) < 0)
        rc = STORE_IO;
    sodium_memzero(priv_hex, sizeof priv_hex);
    ps_keypair_clear(&id);
    ps_keypair_clear(&spk);
    return rc;
}

static int cmd_provision(const char *dir, unsigned long count, const char *keys_path, const char *first)
{
    size_t flen = strlen(first);
    char *end;
    unsigned long long base = strtoull(first + 1, &end, 10), limit = 1;
    for (size_t i = 1; i < flen; i++)
        limit *= 10; /* the numbers keep the first one's number of digits */
    if (first[0] != '+' || flen < 8 || flen > 16 || *end || first[1] < '1' || first[1] > '9' ||
        count > limit - base) {
        fprintf(stderr, "parleyctl: --first-phone must be an E.164 number with room for %lu more\n", count);
        return 2;
    }
    int fd = open(keys_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    FILE *keys = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (!keys) {
        fprintf(stderr, "parleyctl: cannot write %s: %s\n", keys_path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return 1;
    }
    ldb *s;
    inbox_log *log = NULL;
    inbox_log_report rep;
    char log_dir[4096];
    snprintf(log_dir, sizeof log_dir, "%s/inbox", dir);
    inbox_log_config cfg = {0};
    int rc = ldb_open(&s, dir, 0);
    if (rc == STORE_OK && (rc = inbox_log_open(&log, log_dir, &cfg, &rep)) != STORE_OK)
        ldb_close(s);
    if (rc != STORE_OK) {
        fprintf(stderr, "parleyctl: cannot open the store in %s: %s\n", dir, store_strerror(rc));
        fclose(keys);
        return 1;
    }
    int digits = (int)flen - 1;
    for (unsigned long i = 0; i < count && rc == STORE_OK;) {
        ldb_batch *b;
        if ((rc = ldb_batch_begin(s, &b)) != STORE_OK)
            break;
        for (unsigned long n = 0; n < PROVISION_BATCH && i < count && rc == STORE_OK; n++, i++) {
            char phone[STORE_PHONE_MAX + 1];
            snprintf(phone, sizeof phone, "+%0*llu", digits, base + i);
            rc = provision_one(b, log, phone, keys);
        }
        if (rc == STORE_OK)
            rc = ldb_batch_commit(b);
        else
            ldb_batch_abort(b);
        if (rc == STORE_OK) /* the devices first, then their old inboxes' end */
            rc = inbox_log_commit(log);
    }
    inbox_log_close(log);
    ldb_close(s);
    if (fclose(keys) != 0 && rc == STORE_OK)
        rc = STORE_IO;
    if (rc != STORE_OK) {
        fprintf(stderr, "parleyctl: provisioning failed: %s\n", store_strerror(rc));
        return 1;
    }
    printf("{\"provisioned\":%lu,\"keys\":\"%s\"}\n", count, keys_path);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage();
    const char *data = NULL, *keys = NULL, *first = "+19990000000";
    unsigned long count = 0;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--data") == 0)
            data = argv[i + 1];
        else if (strcmp(argv[i], "--keys") == 0)
            keys = argv[i + 1];
        else if (strcmp(argv[i], "--first-phone") == 0)
            first = argv[i + 1];
        else if (strcmp(argv[i], "--count") == 0)
            count = strtoul(argv[i + 1], NULL, 10);
        else
            return usage();
    }
    if (argc % 2 != 0 || !data)
        return usage();
    if (strcmp(argv[1], "stats") == 0 && argc == 4)
        return cmd_stats(data);
    if (strcmp(argv[1], "check") == 0 && argc == 4)
        return cmd_check(data);
    if (strcmp(argv[1], "provision") == 0 && keys && count > 0)
        return sodium_init() < 0 ? 1 : cmd_provision(data, count, keys, first);
    return usage();
}
