#!/usr/bin/env node
// A tiny TCP+UDP echo server for dataplane tests: answers every connection or datagram
// with one JSON line naming itself and the client address it saw.
// usage: echo-server.mjs NAME PORT [PORT...]   (listens on all addresses, both families)
import net from 'node:net';
import dgram from 'node:dgram';

const [name, ...ports] = process.argv.slice(2);
if (!name || ports.length === 0) {
  console.error('usage: echo-server.mjs NAME PORT [PORT...]');
  process.exit(2);
}
const answer = (client, clientPort, local, localPort, proto) =>
  `${JSON.stringify({ name, proto, client, clientPort, local, localPort })}\n`;
const strip = (a) => (a?.startsWith('::ffff:') ? a.slice(7) : a);

let pending = 0;
const ready = () => {
  if (--pending === 0) console.log('ready');
};
for (const p of ports.map(Number)) {
  pending += 2;
  const tcp = net.createServer((s) => {
    s.on('error', () => {});
    s.end(answer(strip(s.remoteAddress), s.remotePort, strip(s.localAddress), s.localPort, 'tcp'));
  });
  tcp.listen({ port: p, host: '::', ipv6Only: false }, ready);
  const udp = dgram.createSocket({ type: 'udp6', ipv6Only: false });
  udp.on('message', (msg, rinfo) => {
    udp.send(answer(strip(rinfo.address), rinfo.port, null, p, 'udp'), rinfo.port, rinfo.address);
  });
  udp.on('error', (e) => console.error(`udp ${p}: ${e.message}`));
  udp.bind({ port: p, address: '::' }, ready);
}
process.on('SIGTERM', () => process.exit(0));
