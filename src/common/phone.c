/* phone.c - E.164 numbers (phone.h). */
#include "phone.h"

#include <string.h>

bool phone_is_e164(const char *phone)
{
    size_t n = phone ? strlen(phone) : 0;
    if (n < 8 || n > PHONE_MAX || phone[0] != '+' || phone[1] < '1' || phone[1] > '9')
        return false;
    for (size_t i = 2; i < n; i++)
        if (phone[i] < '0' || phone[i] > '9')
            return false;
    return true;
}
