/*
 * A minimal harness around the vendor manuals' snippets (examples/c/*.c):
 * listen on ARGV[1]:ARGV[2], accept one connection, run the snippet on it.
 * Only the harness is ours; each snippet is the manual's code, unchanged
 * except where noted in its file.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <netinet/in.h>
#include <sys/socket.h>

static int snippet_accept(int argc, char **argv)
{
	const char *host = argc > 1 ? argv[1] : "0.0.0.0";
	int port = argc > 2 ? atoi(argv[2]) : 10000;
	struct sockaddr_storage ss;
	socklen_t len;
	int one = 1, zero = 0, l, c;
	char byte;

	memset(&ss, 0, sizeof(ss));
	if (strchr(host, ':')) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons(port);
		inet_pton(AF_INET6, host, &s6->sin6_addr);
		len = sizeof(*s6);
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
		s4->sin_family = AF_INET;
		s4->sin_port = htons(port);
		inet_pton(AF_INET, host, &s4->sin_addr);
		len = sizeof(*s4);
	}
	l = socket(ss.ss_family, SOCK_STREAM, 0);
	setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (ss.ss_family == AF_INET6)
		setsockopt(l, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
	if (l < 0 || bind(l, (struct sockaddr *)&ss, len) != 0 || listen(l, 8) != 0) {
		perror("listen");
		exit(1);
	}
	printf("listening\n");
	fflush(stdout);
	c = accept(l, NULL, NULL);
	if (c < 0) {
		perror("accept");
		exit(1);
	}
	/* After the first data: an option in the first data packet is seen too. */
	if (read(c, &byte, 1) < 0)
		perror("read");
	return c;
}
