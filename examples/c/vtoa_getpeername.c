/* Alibaba Cloud vtoa manual, "Use the getpeername call". */
#include "snippet.h"

int main(int argc, char **argv)
{
	int fd = snippet_accept(argc, argv);
	/* ---- the manual's snippet, unchanged ---- */
struct sockaddr caddr;
int caddr_len = sizeof(caddr);
getpeername(fd, &caddr, &caddr_len);
// caddr.sa_family can be AF_INET or AF_INET6, which correspond to IPv4 and IPv6 addresses.
// accept() can also be used to get the client address in a similar way.
	/* ---- end ---- */
	if (caddr.sa_family == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)&caddr;
		printf("getpeername: family=2 %s:%d\n", inet_ntoa(sin->sin_addr), ntohs(sin->sin_port));
	} else {
		printf("getpeername: family=%d\n", caddr.sa_family);
	}
	close(fd);
	return 0;
}
