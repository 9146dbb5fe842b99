/*
 * An accept loop that prints every connection's real client with
 * toa_real_peer() (include/toa.h), next to what accept() reported.
 *
 *   gcc -Wall -Wextra -Werror -I include -o real_peer_server examples/c/real_peer_server.c
 *   ./real_peer_server [BIND_ADDR] [PORT] [COUNT]     (default :: 10000, forever)
 *
 * Prints "accept=ADDR real=ADDR" per connection, after the first read, so an
 * option carried only by the first data packet has been seen.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "toa.h"

static const char *fmt(const struct sockaddr_storage *ss, char *buf, size_t size)
{
	char ip[INET6_ADDRSTRLEN];

	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;

		inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof(ip));
		snprintf(buf, size, "%s:%u", ip, ntohs(sin->sin_port));
	} else if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;

		inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof(ip));
		snprintf(buf, size, "[%s]:%u", ip, ntohs(sin6->sin6_port));
	} else {
		snprintf(buf, size, "family-%u", ss->ss_family);
	}
	return buf;
}

int main(int argc, char **argv)
{
	const char *bind_addr = argc > 1 ? argv[1] : "::";
	int port = argc > 2 ? atoi(argv[2]) : 10000;
	long count = argc > 3 ? atol(argv[3]) : -1;
	struct sockaddr_storage addr;
	socklen_t addr_len;
	int one = 1, zero = 0, fd;

	memset(&addr, 0, sizeof(addr));
	if (strchr(bind_addr, ':')) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&addr;

		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons((uint16_t)port);
		if (inet_pton(AF_INET6, bind_addr, &sin6->sin6_addr) != 1)
			return 2;
		addr_len = sizeof(*sin6);
	} else {
		struct sockaddr_in *sin = (struct sockaddr_in *)&addr;

		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)port);
		if (inet_pton(AF_INET, bind_addr, &sin->sin_addr) != 1)
			return 2;
		addr_len = sizeof(*sin);
	}
	fd = socket(addr.ss_family, SOCK_STREAM, 0);
	if (fd < 0) {
		perror("socket");
		return 1;
	}
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (addr.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
	if (bind(fd, (struct sockaddr *)&addr, addr_len) != 0 || listen(fd, 64) != 0) {
		perror("bind/listen");
		return 1;
	}
	printf("listening\n");
	fflush(stdout);
	while (count != 0) {
		struct sockaddr_storage from, real;
		socklen_t from_len = sizeof(from), real_len = sizeof(real);
		char a[80], b[80], byte;
		int c = accept(fd, (struct sockaddr *)&from, &from_len);

		if (c < 0) {
			perror("accept");
			return 1;
		}
		if (read(c, &byte, 1) < 0)
			perror("read");
		if (toa_real_peer(c, &real, &real_len) != 0) {
			perror("toa_real_peer");
			close(c);
			continue;
		}
		printf("accept=%s real=%s\n", fmt(&from, a, sizeof(a)), fmt(&real, b, sizeof(b)));
		fflush(stdout);
		close(c);
		if (count > 0)
			count--;
	}
	close(fd);
	return 0;
}
