#!/usr/bin/env node
// The client side of dataplane tests: makes N connections (or sends N datagrams) to
// HOST:PORT and prints one JSON summary: who answered, which client address they saw,
// and which errors happened (ECONNREFUSED, timeout, ...).
// usage: probe.mjs tcp|udp HOST PORT [--count N] [--timeout MS] [--bind IP] [--interval MS] [--same-port] [--sequence] [--pairs]
//        (--pairs: also count answers by "<endpoint name> <client address it saw>")
//        probe.mjs tcp HOST PORT --follow [--interval MS]: connects until killed, one line per
//        attempt: "<epoch ms when it started> <endpoint name>" or "... !<error>" (latency tests)
//        probe.mjs tcp HOST PORT --hold [--interval MS] [--timeout MS]: one long-lived
//        connection to an echo server's PORT/hold port: sends a line every interval and
//        prints "<epoch ms> <endpoint name>" per answer; on a close, an error or an answer
//        later than the timeout it prints "<epoch ms> !<error>" and exits
import net from 'node:net';
import dgram from 'node:dgram';

const argv = process.argv.slice(2);
const [proto, host, portText] = argv;
const opt = (name, dflt) => {
  const i = argv.indexOf(`--${name}`);
  return i === -1 ? dflt : argv[i + 1];
};
const flag = (name) => argv.includes(`--${name}`);
const count = Number(opt('count', '1'));
const timeout = Number(opt('timeout', '2000'));
const interval = Number(opt('interval', '0'));
const bind = opt('bind', undefined);
const port = Number(portText);

const result = { ok: 0, names: {}, clients: {}, errors: {}, sequence: [], pairs: {} };
const record = (line) => {
  const a = JSON.parse(line);
  result.ok++;
  result.names[a.name] = (result.names[a.name] ?? 0) + 1;
  const c = `${a.client}`;
  result.clients[c] = (result.clients[c] ?? 0) + 1;
  result.pairs[`${a.name} ${c}`] = (result.pairs[`${a.name} ${c}`] ?? 0) + 1;
  result.sequence.push(a.name);
};
const fail = (code) => {
  result.errors[code] = (result.errors[code] ?? 0) + 1;
  result.sequence.push(`!${code}`);
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function tcpOnce() {
  return new Promise((resolve) => {
    const s = net.connect({ host, port, localAddress: bind, timeout });
    let buf = '';
    let done = false;
    const finish = (fn) => {
      if (done) return;
      done = true;
      fn();
      s.destroy();
      resolve();
    };
    s.on('data', (d) => (buf += d));
    s.on('end', () => finish(() => (buf.trim() ? record(buf.trim()) : fail('EMPTY'))));
    s.on('timeout', () => finish(() => fail('TIMEOUT')));
    s.on('error', (e) => finish(() => fail(e.code ?? e.message)));
  });
}

async function udpRun() {
  // --same-port: one socket for all datagrams (one conntrack flow), else one per datagram.
  const open = () =>
    new Promise((resolve) => {
      const s = dgram.createSocket(host.includes(':') ? 'udp6' : 'udp4');
      s.bind({ address: bind, port: 0 }, () => s.connect(port, host, () => resolve(s)));
    });
  let shared = flag('same-port') ? await open() : null;
  for (let i = 0; i < count; i++) {
    const s = shared ?? (await open());
    await new Promise((resolve) => {
      const t = setTimeout(() => finish(() => fail('TIMEOUT')), timeout);
      let done = false;
      const onMsg = (m) => finish(() => record(m.toString().trim()));
      const onErr = (e) => finish(() => fail(e.code ?? e.message));
      function finish(fn) {
        if (done) return;
        done = true;
        clearTimeout(t);
        s.off('message', onMsg);
        s.off('error', onErr);
        fn();
        resolve();
      }
      s.on('message', onMsg);
      s.on('error', onErr);
      s.send(`ping ${i}`);
    });
    if (!shared) s.close();
    if (interval) await sleep(interval);
  }
  shared?.close();
}

async function holdRun() {
  const s = net.connect({ host, port, localAddress: bind });
  s.setNoDelay(true);
  let buf = '';
  let seq = 0;
  let timer = null;
  const line = (what) => process.stdout.write(`${Date.now()} ${what}\n`);
  const end = (code) => {
    if (timer) clearTimeout(timer);
    line(`!${code}`);
    s.destroy();
    process.exit(0);
  };
  const arm = () => {
    if (timer) clearTimeout(timer);
    timer = setTimeout(() => end('TIMEOUT'), timeout);
  };
  arm();
  s.on('data', (d) => {
    buf += d;
    for (let i = buf.indexOf('\n'); i !== -1; i = buf.indexOf('\n')) {
      const a = JSON.parse(buf.slice(0, i));
      buf = buf.slice(i + 1);
      line(a.name);
      arm();
      setTimeout(() => s.write(`${++seq}\n`), interval || 100);
    }
  });
  s.on('end', () => end('CLOSED'));
  s.on('error', (e) => end(e.code ?? e.message));
}

if (proto === 'tcp' && flag('hold')) {
  await holdRun();
  await new Promise(() => {});
} else if (proto === 'tcp' && flag('follow')) {
  for (;;) {
    const before = result.sequence.length;
    const startedAt = Date.now();
    await tcpOnce();
    process.stdout.write(`${startedAt} ${result.sequence[before]}\n`);
    result.sequence.length = 0;
    if (interval) await sleep(interval);
  }
} else if (proto === 'tcp') {
  for (let i = 0; i < count; i++) {
    await tcpOnce();
    if (interval) await sleep(interval);
  }
} else if (proto === 'udp') {
  await udpRun();
} else {
  console.error('usage: probe.mjs tcp|udp HOST PORT [--count N] [--timeout MS] [--bind IP]');
  process.exit(2);
}
if (!flag('sequence')) delete result.sequence;
if (!flag('pairs')) delete result.pairs;
console.log(JSON.stringify(result));
