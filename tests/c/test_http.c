/* test_http.c — core/http.c without a network: digests against published
 * vectors (FIPS 180-2 "abc", the empty string, git's object id of
 * "hello\n"), a resumed request refused without an output file, a
 * connection refused reported with its URL, file sizes. The transfers
 * themselves are tested against a local hub by tests/lua/test_fetch.lua. */
#include "fmseg.h"
#include "tap.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "wb");
  if (f) {
    fputs(text, f);
    fclose(f);
  }
}

/* a port on 127.0.0.1 nothing listens on: bound, then closed */
static int closed_port(void) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = 0 };
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) != 0 || getsockname(s, (struct sockaddr *)&a, &len) != 0) {
    if (s >= 0) close(s);
    return -1;
  }
  close(s);
  return ntohs(a.sin_port);
}

int main(void) {
  char hex[65];
  ok(fm_digest("abc", 3, "sha256", hex, sizeof hex) == 0 &&
     strcmp(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad") == 0,
     "sha256(\"abc\"), FIPS 180-2");
  ok(fm_digest("", 0, "sha256", hex, sizeof hex) == 0 &&
     strcmp(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855") == 0, "sha256 of nothing");
  ok(fm_digest("abc", 3, "sha1", hex, sizeof hex) == 0 && strcmp(hex, "a9993e364706816aba3e25717850c26c9cd0d89d") == 0,
     "sha1(\"abc\"), FIPS 180-2");
  ok(fm_digest("abc", 3, "md5", hex, sizeof hex) != 0 && strstr(fm_last_error(), "md5") != NULL,
     "an unknown algorithm is refused by name");
  ok(fm_digest("abc", 3, "sha256", hex, 64) != 0, "a hex buffer one byte short is refused");

  char path[] = "/tmp/fmseg_test_http_XXXXXX";
  int fd = mkstemp(path);
  if (fd >= 0) close(fd);
  write_text(path, "hello\n");
  ok(fm_file_digest(path, "sha1", 1, hex, sizeof hex) == 0 &&
     strcmp(hex, "ce013625030ba8dba906f756967f9e9ca394464a") == 0, "git blob id of \"hello\\n\" (git hash-object)");
  ok(fm_file_digest(path, "sha256", 0, hex, sizeof hex) == 0 &&
     strcmp(hex, "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03") == 0, "sha256 of a file");
  int64_t size = -1;
  double mtime = 0;
  ok(fm_file_stat(path, &size, &mtime) == 0 && size == 6 && mtime > 0, "fm_file_stat: size and time");
  unlink(path);
  ok(fm_file_stat(path, &size, NULL) != 0 && strstr(fm_last_error(), path) != NULL, "a missing file is named");
  ok(fm_file_digest(path, "sha256", 0, hex, sizeof hex) != 0 && strstr(fm_last_error(), path) != NULL,
     "digest of a missing file: an error naming it");

  ok(fm_http_open("POST", "http://127.0.0.1/", NULL, NULL, 0, 0) == NULL && strstr(fm_last_error(), "POST") != NULL,
     "only GET and HEAD");
  ok(fm_http_open("GET", "http://127.0.0.1/", NULL, NULL, 10, 0) == NULL &&
     strstr(fm_last_error(), "output file") != NULL, "a resumed request needs an output file");

  int port = closed_port();
  if (port < 0) {
    skip("cannot bind 127.0.0.1");
  } else {
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/x", port);
    fm_http *h = fm_http_open("HEAD", url, "Authorization: Bearer t\n", NULL, 0, 0);
    int rc = 1;
    for (int i = 0; h && rc == 1 && i < 1000; i++) rc = fm_http_step(h, 50);
    ok(h && rc == -1 && strstr(fm_last_error(), url) != NULL && fm_http_status(h) == 0,
       "a refused connection fails, naming the URL");
    ok(h && fm_http_step(h, 0) == -1 && strstr(fm_last_error(), "HEAD") != NULL, "and keeps failing when stepped again");
    ok(h && fm_http_header(h, "ETag") == NULL, "no headers without a response");
    fm_http_close(h);
  }
  fm_http_close(NULL);
  return done_testing();
}
