/* Alibaba Cloud vtoa manual, "(Recommended) Use the getsockopt call". */
#include "snippet.h"

int main(int argc, char **argv)
{
	int fd = snippet_accept(argc, argv);
	errno = 0;
	/* ---- the manual's snippet, unchanged ---- */
struct sockaddr caddr;
int optlen = sizeof(caddr);
int optname = 1348;
getsockopt(fd, IPPROTO_IP, optname, &caddr, &optlen);
// caddr.sa_family can be AF_INET or AF_INET6, which correspond to IPv4 and IPv6 addresses.
	/* ---- end ---- */
	if (errno != 0) {
		printf("vtoa 1348: errno=%s\n", errno == EINVAL ? "EINVAL" : errno == ENOENT ? "ENOENT" : strerror(errno));
	} else {
		struct sockaddr_in *sin = (struct sockaddr_in *)&caddr;
		printf("vtoa 1348: family=%d %s:%d optlen=%d\n", caddr.sa_family, inet_ntoa(sin->sin_addr),
		       ntohs(sin->sin_port), optlen);
	}
	close(fd);
	return 0;
}
