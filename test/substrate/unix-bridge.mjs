#!/usr/bin/env node
// Carries TCP connections across network namespaces through a Unix socket (Unix sockets
// live in the filesystem, so they cross network namespaces; nothing is routed between
// namespaces).
//   unix-bridge.mjs HOST PORT SOCKET_PATH
//       runs inside a namespace: listens on TCP HOST:PORT there and carries every
//       connection to SOCKET_PATH (served in the root namespace, e.g. by a test's
//       fault-injecting proxy to the apiserver);
//   unix-bridge.mjs --serve-unix SOCKET_PATH HOST PORT
//       the other end: listens on SOCKET_PATH and connects each connection to TCP
//       HOST:PORT in the namespace it runs in (the netns cluster's apiserver relay).
// Prints READY once listening.
import net from 'node:net';
import { rmSync } from 'node:fs';

const argv = process.argv.slice(2);
const serveUnix = argv[0] === '--serve-unix';
const [a, b, c] = serveUnix ? argv.slice(1) : argv;
const listen = serveUnix ? { path: a } : { host: a, port: Number(b) };
const target = serveUnix ? { host: b, port: Number(c) } : { path: c };
if (serveUnix) rmSync(a, { force: true });

const server = net.createServer((client) => {
  const upstream = net.connect(target);
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
server.listen(listen, () => console.log('READY'));
process.on('SIGTERM', () => process.exit(0));
