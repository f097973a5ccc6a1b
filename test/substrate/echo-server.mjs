#!/usr/bin/env node
// A tiny TCP+UDP echo server for dataplane tests: answers every connection or datagram
// with one JSON line naming itself and the client address it saw.
// usage: echo-server.mjs NAME PORT [PORT...]   (listens on all addresses, both families)
//   PORT/hold: TCP connections on that port stay open: the server answers at once and
//   then once more for every line the client sends (with the line's seq), until the
//   client closes (long-lived connections for drain and restart tests). UDP as usual.
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
for (const spec of ports) {
  const p = Number(spec.split('/')[0]);
  const hold = spec.endsWith('/hold');
  pending += 2;
  const tcp = net.createServer((s) => {
    s.on('error', () => {});
    const line = () => answer(strip(s.remoteAddress), s.remotePort, strip(s.localAddress), s.localPort, 'tcp');
    if (!hold) return void s.end(line());
    s.write(line());
    let buf = '';
    s.on('data', (d) => {
      buf += d;
      for (let i = buf.indexOf('\n'); i !== -1; i = buf.indexOf('\n')) {
        const seq = buf.slice(0, i).trim();
        buf = buf.slice(i + 1);
        s.write(`${JSON.stringify({ name, proto: 'tcp', client: strip(s.remoteAddress), clientPort: s.remotePort, seq })}\n`);
      }
    });
    s.on('end', () => s.end());
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
