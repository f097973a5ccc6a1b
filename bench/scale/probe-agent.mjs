#!/usr/bin/env node
// The scale run's client, running in a client pod namespace. One JSON request a line on
// stdin, one JSON answer a line on stdout (same id). Every connection is to an echo
// server (test/substrate/echo-server.mjs), which answers with the local address it was
// reached at, so the agent knows which endpoint answered. Connections end with a reset
// (no TIME_WAIT, conntrack keeps them 10 s, not 2 min).
//
//   {"id":1,"op":"until","host":H,"port":P,"expect":["198.18.16.7"],"burst":8,"intervalMs":20,
//    "connectTimeoutMs":300,"deadlineMs":60000}
//      rounds of `burst` parallel connections every intervalMs until one is answered by an
//      address in expect (any answer when expect is absent); answers
//      {"id":1,"ok":true,"startedAt":EPOCH_MS_OF_THAT_CONNECTION'S_SYN,"answeredAt":..,"rounds":N}
//      or {"id":1,"ok":false,"error":"deadline","rounds":N}
//   {"id":2,"op":"connect","targets":[[H,P],...],"timeoutMs":2000}
//      one connection after the other; answers {"id":2,"ms":[connect() time per success],
//      "errors":{CODE:n}} (connect() time: from the call to the 'connect' event, i.e. SYN to
//      SYN-ACK, the first packet's trip through the node's rules and back)
//   {"id":3,"op":"cancel","target":1}
import net from 'node:net';
import readline from 'node:readline';

const cancelled = new Set();
const send = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** One connection: resolves {local, connectMs} or {error}. */
function once(host, port, timeoutMs) {
  return new Promise((resolve) => {
    const t0 = process.hrtime.bigint();
    let connectMs = null;
    let buf = '';
    let done = false;
    const s = net.connect({ host, port });
    const timer = setTimeout(() => finish({ error: connectMs === null ? 'TIMEOUT' : 'NOANSWER' }), timeoutMs);
    function finish(r) {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (!s.destroyed) s.resetAndDestroy();
      resolve(r);
    }
    s.on('connect', () => (connectMs = Number(process.hrtime.bigint() - t0) / 1e6));
    s.on('data', (d) => {
      buf += d;
      const nl = buf.indexOf('\n');
      if (nl === -1) return;
      try {
        const a = JSON.parse(buf.slice(0, nl));
        finish({ local: a.local, name: a.name, connectMs });
      } catch {
        finish({ error: 'BADANSWER' });
      }
    });
    s.on('end', () => finish({ error: 'EMPTY' }));
    s.on('error', (e) => finish({ error: e.code ?? e.message }));
  });
}

async function until(r) {
  const expect = r.expect ? new Set(r.expect) : null;
  const burst = r.burst ?? 1;
  const interval = r.intervalMs ?? 20;
  const timeout = r.connectTimeoutMs ?? 300;
  const end = Date.now() + (r.deadlineMs ?? 60_000);
  let rounds = 0;
  while (Date.now() < end && !cancelled.has(r.id)) {
    rounds++;
    const startedAt = Date.now();
    const results = await Promise.all(Array.from({ length: burst }, () => once(r.host, r.port, timeout)));
    const hit = results.find((x) => x.local && (!expect || expect.has(x.local)));
    if (hit) return send({ id: r.id, ok: true, startedAt, answeredAt: Date.now(), rounds, local: hit.local });
    const left = interval - (Date.now() - startedAt);
    if (left > 0) await sleep(left);
  }
  send({ id: r.id, ok: false, error: cancelled.has(r.id) ? 'cancelled' : 'deadline', rounds });
}

async function connect(r) {
  const ms = [];
  const errors = {};
  for (const [host, port] of r.targets) {
    const x = await once(host, port, r.timeoutMs ?? 2000);
    if (x.local && x.connectMs !== null) ms.push(x.connectMs);
    else errors[x.error ?? 'UNKNOWN'] = (errors[x.error ?? 'UNKNOWN'] ?? 0) + 1;
  }
  send({ id: r.id, ms, errors });
}

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  let r;
  try {
    r = JSON.parse(line);
  } catch {
    return send({ error: `bad request: ${line.slice(0, 100)}` });
  }
  if (r.op === 'until') void until(r);
  else if (r.op === 'connect') void connect(r);
  else if (r.op === 'cancel') cancelled.add(r.target);
  else send({ id: r.id, error: `unknown op ${r.op}` });
});
rl.on('close', () => process.exit(0));
send({ ready: true });
