#!/usr/bin/env node
// Runs inside a test's node namespace: listens on TCP HOST:PORT there and carries every
// connection to a Unix socket, which the test process (in the root namespace) serves
// with its fault-injecting proxy to the apiserver. Unix sockets live in the filesystem,
// so they cross network namespaces; nothing is routed between namespaces.
// usage: unix-bridge.mjs HOST PORT SOCKET_PATH
import net from 'node:net';

const [host, port, path] = process.argv.slice(2);
const server = net.createServer((client) => {
  const upstream = net.connect({ path });
  client.pipe(upstream);
  upstream.pipe(client);
  const close = () => {
    client.destroy();
    upstream.destroy();
  };
  client.on('error', close);
  upstream.on('error', close);
  client.on('close', close);
  upstream.on('close', close);
});
server.listen({ host, port: Number(port) }, () => console.log('READY'));
