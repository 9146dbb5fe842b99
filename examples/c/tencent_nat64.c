/*
 * Tencent Cloud CLB manual, "NAT64 CLB used in a hybrid cloud": the complete
 * sample. Unchanged but for the manual's rendering typos: `fromsizeof(from)`
 * and `"..."from` lost their commas, and `get_peer_name` stands for
 * getpeername (mapped by the #define below, so the call reads as printed).
 */
#include "snippet.h"

#define get_peer_name getpeername

/* ---- the manual's sample, unchanged (declarations) ---- */
//Define TOA variables. Set `TOA_BASE_CTL` to 4096.
enum {
TOA_BASE_CTL = 4096,
TOA_SO_SET_MAX = TOA_BASE_CTL,
TOA_SO_GET_LOOKUP = TOA_BASE_CTL,
TOA_SO_GET_MAX = TOA_SO_GET_LOOKUP,
};
//Define a data structure to store the IP address.
struct toa_nat64_peer {
struct in6_addr saddr;
uint16_t sport;
};
//Declare the variable that is used to store the address.
struct toa_nat64_peer client_addr_nat64;
/* ---- end ---- */

int main(int argc, char **argv)
{
	int client_fd = snippet_accept(argc, argv);
	/* ---- the manual's sample, unchanged (the calls) ---- */
//Make calls to get the real client IP in the NAT64 scenario.
char from[40];
int len = sizeof(struct toa_nat64_peer);
int ret;
ret = getsockopt(client_fd, IPPROTO_IP, TOA_SO_GET_LOOKUP, &client_addr_nat64, &len);
if (ret == 0) {
inet_ntop(AF_INET6, &(client_addr_nat64.saddr), from, sizeof(from));
//Obtain the source IP and source port.
printf("real client v6 [%s]:%d\n", from, ntohs(client_addr_nat64.sport));
} else if (ret != 0) {
struct sockaddr v4addr;
len = sizeof(struct sockaddr);
//Obtain the source IP and source port:
//In the hybrid cloud deployment scenario, the source IP address is the IP address after SNAT;
//In the non-hybrid cloud deployment scenario, the source IP address is the client IP address without SNAT and NAT64.
//The semantics of this function is to get the real client address and port.
if (get_peer_name(client_fd, &v4addr, &len) == 0) {
    inet_ntop(AF_INET, &(((struct sockaddr_in *)&v4addr)->sin_addr), from, sizeof(from));
    printf("real client v4 [%s]:%d\n", from, ntohs(((struct sockaddr_in *)&v4addr)->sin_port));
}
}
	/* ---- end ---- */
	fflush(stdout);
	close(client_fd);
	return 0;
}
