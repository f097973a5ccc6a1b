#!/usr/bin/env node
// The client side of the differential tests: runs many probes from one namespace at once
// and prints one JSON object {id: result}. Each probe makes up to COUNT TCP connections
// (or sends COUNT datagrams, each from a fresh socket: a new conntrack flow) to HOST:PORT,
// one after the other, and stops at the first failure. Its result says:
//   outcome:   "answered" (all attempts answered), or the first failure's kind
//              ("refused", "reset", "timeout", "unreachable", or the raw error code),
//              prefixed "answered+" when some attempts were answered before it;
//   endpoints: the names of the echo servers that answered (sorted, distinct);
//   clients:   the client addresses those servers saw (sorted, distinct).
// usage: probe-matrix.mjs JSON   where JSON is [{id, proto: "tcp"|"udp", host, port, count?, timeoutMs?, bind?}]
import net from 'node:net';
import dgram from 'node:dgram';

const KINDS = { ECONNREFUSED: 'refused', ECONNRESET: 'reset', TIMEOUT: 'timeout', EHOSTUNREACH: 'unreachable', ENETUNREACH: 'unreachable' };

function tcpOnce(p) {
  return new Promise((resolve) => {
    const s = net.connect({ host: p.host, port: p.port, localAddress: p.bind, timeout: p.timeoutMs });
    let buf = '';
    let done = false;
    const finish = (r) => {
      if (done) return;
      done = true;
      s.destroy();
      resolve(r);
    };
    s.on('data', (d) => (buf += d));
    s.on('end', () => finish(buf.trim() ? { answer: JSON.parse(buf.trim().split('\n')[0]) } : { error: 'EMPTY' }));
    s.on('timeout', () => finish({ error: 'TIMEOUT' }));
    s.on('error', (e) => finish({ error: e.code ?? e.message }));
  });
}

function udpOnce(p) {
  return new Promise((resolve) => {
    const s = dgram.createSocket(p.host.includes(':') ? 'udp6' : 'udp4');
    let done = false;
    let timer = null;
    const finish = (r) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      s.close();
      resolve(r);
    };
    s.on('message', (m) => finish({ answer: JSON.parse(m.toString().trim()) }));
    s.on('error', (e) => finish({ error: e.code ?? e.message }));
    s.bind({ address: p.bind, port: 0 }, () =>
      s.connect(p.port, p.host, (err) => {
        if (err) return finish({ error: err.code ?? err.message });
        timer = setTimeout(() => finish({ error: 'TIMEOUT' }), p.timeoutMs);
        s.send('ping');
      }),
    );
  });
}

async function run(p) {
  const endpoints = new Set();
  const clients = new Set();
  let answered = 0;
  let failure = null;
  for (let i = 0; i < (p.count ?? 1) && !failure; i++) {
    const r = p.proto === 'udp' ? await udpOnce(p) : await tcpOnce(p);
    if (r.answer) {
      answered++;
      endpoints.add(r.answer.name);
      clients.add(String(r.answer.client));
    } else failure = KINDS[r.error] ?? r.error;
  }
  const outcome = failure ? (answered ? `answered+${failure}` : failure) : 'answered';
  return { outcome, endpoints: [...endpoints].sort(), clients: [...clients].sort() };
}

const probes = JSON.parse(process.argv[2] ?? '[]').map((p) => ({ timeoutMs: 1000, ...p }));
const results = await Promise.all(probes.map(run));
console.log(JSON.stringify(Object.fromEntries(probes.map((p, i) => [p.id, results[i]]))));
