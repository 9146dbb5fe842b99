/*
 * toa.h — ask for the real client of a TCP connection behind a FullNAT
 * forwarder (TCP Option Address), as `toa agent`, Alibaba vtoa and the
 * Tencent/DPVS toa modules answer it.
 *
 * Header only. Compiles with gcc -Wall -Wextra -Werror (C99 and later).
 *
 *   struct sockaddr_storage peer;
 *   socklen_t len = sizeof(peer);
 *   if (toa_real_peer(fd, &peer, &len) == 0) { ... peer.ss_family ... }
 *
 * toa_real_peer() asks, in order:
 *   1. getsockopt(fd, IPPROTO_IP, TOA_VTOA_GET_PEER = 1348): a sockaddr_in or
 *      sockaddr_in6 with the real client (Alibaba vtoa; toa agent);
 *   2. getsockopt(fd, IPPROTO_IP, TOA_SO_GET_LOOKUP = 4096): a
 *      struct toa_nat64_peer with an IPv6 client (Tencent/DPVS NAT64);
 *   3. getpeername(fd), which the agent or a TOA module translates, and which
 *      is the transport peer everywhere else.
 *
 * Errors (the agent; the modules behave alike):
 *   1348: ENOENT when the connection carried no address, EINVAL when the
 *         buffer is shorter than the address (sizeof(struct sockaddr) is too
 *         short for an IPv6 client: pass a sockaddr_in6 or sockaddr_storage);
 *   4096: EINVAL when the connection carried no IPv6 address or the buffer
 *         is shorter than 20 bytes;
 *   ENOPROTOOPT for both when nothing answers them (no agent, no module).
 */
#ifndef TOA_H
#define TOA_H

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>

#ifdef __cplusplus
extern "C" {
#endif

/* getsockopt(fd, IPPROTO_IP, TOA_VTOA_GET_PEER, &sockaddr_in(6), &len) */
#define TOA_VTOA_GET_PEER 1348

/* The Tencent/DPVS names: TOA_SO_GET_LOOKUP is what applications call. */
#ifndef TOA_BASE_CTL
#define TOA_BASE_CTL 4096
#define TOA_SO_SET_MAX TOA_BASE_CTL
#define TOA_SO_GET_LOOKUP TOA_BASE_CTL
#define TOA_SO_GET_MAX TOA_SO_GET_LOOKUP
#endif

#ifndef TOA_NAT64_PEER_DEFINED
#define TOA_NAT64_PEER_DEFINED
/* Answer of TOA_SO_GET_LOOKUP: 20 bytes with padding, sport in network order. */
struct toa_nat64_peer {
	struct in6_addr saddr;
	uint16_t sport;
};
#endif

/*
 * The real client of `fd` into `out` (*len: its size on entry, the address
 * length on return). Returns 0, or -1 with errno from getpeername().
 */
static inline int toa_real_peer(int fd, struct sockaddr_storage *out, socklen_t *len)
{
	struct sockaddr_storage ss;
	struct toa_nat64_peer nat64;
	socklen_t n = sizeof(ss);
	int saved = errno;

	memset(&ss, 0, sizeof(ss));
	if (getsockopt(fd, IPPROTO_IP, TOA_VTOA_GET_PEER, &ss, &n) == 0 &&
	    ((ss.ss_family == AF_INET && n >= sizeof(struct sockaddr_in)) ||
	     (ss.ss_family == AF_INET6 && n >= sizeof(struct sockaddr_in6)))) {
		if (n > *len)
			n = *len;
		memcpy(out, &ss, n);
		*len = n;
		return 0;
	}
	n = sizeof(nat64);
	if (getsockopt(fd, IPPROTO_IP, TOA_SO_GET_LOOKUP, &nat64, &n) == 0 && n >= 18) {
		struct sockaddr_in6 sin6;

		memset(&sin6, 0, sizeof(sin6));
		sin6.sin6_family = AF_INET6;
		sin6.sin6_port = nat64.sport;
		sin6.sin6_addr = nat64.saddr;
		n = sizeof(sin6);
		if (n > *len)
			n = *len;
		memcpy(out, &sin6, n);
		*len = n;
		return 0;
	}
	errno = saved;
	return getpeername(fd, (struct sockaddr *)out, len);
}

#ifdef __cplusplus
}
#endif

#endif /* TOA_H */
