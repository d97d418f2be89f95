/* fuzz_yaml.c — fm_yaml_string_to_json on arbitrary text. Contract: an
 * error with a message, or JSON that cJSON reads back (the Lua side
 * decodes it, so malformed output would surface far from its cause). */
#include "fuzz_util.h"

#include <cjson/cJSON.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *text = fuzz_cstring(data, size);
  char *json = fm_yaml_string_to_json(text, "fuzz.yaml");
  if (!json) {
    fuzz_expect_error();
  } else {
    cJSON *root = cJSON_ParseWithOpts(json, NULL, 1);
    if (!root) {
      fprintf(stderr, "fuzz: yaml gave invalid JSON: %.200s\n", json);
      fuzz_fail("fm_yaml_string_to_json output is JSON");
    }
    cJSON_Delete(root);
    fm_free(json);
  }
  free(text);
  return 0;
}
