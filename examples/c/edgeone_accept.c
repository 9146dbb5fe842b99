/*
 * Tencent Cloud EdgeOne manual, "listen on an IPv4 address" C demo: the
 * business modification points (a sockaddr_in6 for the client even on an
 * IPv4 listener, then a switch on its family), unchanged. The harness opens
 * the listener instead of the demo's fixed port 10000.
 */
#include "snippet.h"

int main(int argc, char **argv)
{
	const char *host = argc > 1 ? argv[1] : "0.0.0.0";
	int server_port = argc > 2 ? atoi(argv[2]) : 10000;
	struct sockaddr_in serveraddr;
	int isReuse = 1;
	int l_sockfd = socket(AF_INET, SOCK_STREAM, 0);

	memset(&serveraddr, 0, sizeof(struct sockaddr_in));
	serveraddr.sin_family = AF_INET;
	serveraddr.sin_port = htons(server_port);
	inet_pton(AF_INET, host, &serveraddr.sin_addr);
	setsockopt(l_sockfd, SOL_SOCKET, SO_REUSEADDR, (const char *)&isReuse, sizeof(isReuse));
	if (bind(l_sockfd, (struct sockaddr *)&serveraddr, sizeof(serveraddr)) != 0) {
		printf("bind error\n");
		return -1;
	}
	listen(l_sockfd, 5);
	printf("listening\n");
	fflush(stdout);
	/* ---- the manual's demo, unchanged ---- */
// 业务修改点: 客户端地址必须采用v6结构
struct sockaddr_in6 clientAddr;
int clientAddrLen = sizeof(clientAddr);
memset(&clientAddr, 0, sizeof(clientAddr));
// 接受来自客户端的连接
int linkFd = accept(l_sockfd, (struct sockaddr*)&clientAddr, &clientAddrLen);
if(-1 == linkFd)
{
printf("accept error\n");
return -1;
}
// 业务修改点: 根据客户端sin6_family的类型, 判断客户端是v4地址还是v6地址
if (clientAddr.sin6_family == AF_INET) {
printf("AF_INET accept getpeername %s : %d successful\n",
inet_ntoa(((struct sockaddr_in*)&clientAddr)->sin_addr),
ntohs(((struct sockaddr_in*)&clientAddr)->sin_port));
}else if (clientAddr.sin6_family == AF_INET6){
char addr_p[128] = {0};
inet_ntop(AF_INET6, (void *)&((struct sockaddr_in6*)&clientAddr)->sin6_addr, addr_p, (socklen_t )sizeof(addr_p));
printf("AF_INET6 accept getpeername %s : %d successful\n",
addr_p,
ntohs(((struct sockaddr_in6*)&clientAddr)->sin6_port));
}else{
printf("unknow sin_family:%d \n", clientAddr.sin6_family);
}
	/* ---- end ---- */
	fflush(stdout);
	close(linkFd);
	close(l_sockfd);
	return 0;
}
