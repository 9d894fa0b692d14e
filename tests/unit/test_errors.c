/* test_errors.c - the error table (src/common/errors.h) and the wire's ErrorCode enum
 * (proto/parley.proto) list the same codes under the same names. */
#include <string.h>

#include "check.h"
#include "errors.h"
#include "parley.pb-c.h"

static const struct {
    const char *name;
    uint32_t code;
} table[] = {
#define ROW(name, code, text) {#name, code},
    PARLEY_ERRORS(ROW)
#undef ROW
};

static void test_table_matches_proto(void)
{
    const ProtobufCEnumDescriptor *d = &parley__error_code__descriptor;
    size_t n = sizeof table / sizeof *table;
    CHECK(d->n_values == n);
    for (size_t i = 0; i < n; i++) {
        const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value_by_name(d, table[i].name);
        CHECK(v != NULL && (uint32_t)v->value == table[i].code);
        CHECK(strcmp(perr_name(table[i].code), table[i].name) == 0);
        CHECK(strlen(perr_text(table[i].code)) > 5);
    }
    for (unsigned i = 0; i < d->n_values; i++) /* and the other way round */
        CHECK(strcmp(perr_name((uint32_t)d->values[i].value), "UNKNOWN") != 0);
}

static void test_unknown_codes(void)
{
    CHECK(strcmp(perr_name(0), "UNKNOWN") == 0);
    CHECK(strcmp(perr_name(9999), "UNKNOWN") == 0);
    CHECK(strcmp(perr_text(9999), "an unknown error") == 0);
    CHECK((int)PERR_WRONG_CODE == (int)PARLEY__ERROR_CODE__WRONG_CODE);
}

int main(void)
{
    RUN(test_table_matches_proto());
    RUN(test_unknown_codes());
    return check_summary("errors");
}
