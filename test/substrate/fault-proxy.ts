// A TCP-level fault injector between kpx and the apiserver. It serves a Unix socket (the
// node namespace reaches it through unix-bridge.mjs) and forwards to the apiserver's
// TCP port. TLS passes through untouched; faults are what a long-running watch meets on
// a real network: connections cut, connections refused, connections that go silent
// without closing.
import net from 'node:net';
import { rm } from 'node:fs/promises';

interface Pair {
  readonly client: net.Socket;
  readonly upstream: net.Socket;
  stalled: boolean;
}

export class FaultProxy {
  private server: net.Server | null = null;
  private readonly pairs = new Set<Pair>();
  private refusing = false;
  private chaosTimer: NodeJS.Timeout | null = null;
  /** counters, for the test's report */
  cuts = 0;
  refused = 0;
  connections = 0;

  constructor(
    readonly socketPath: string,
    private target: { host: string; port: number },
  ) {}

  async start(): Promise<void> {
    await rm(this.socketPath, { force: true });
    this.server = net.createServer((client) => this.accept(client));
    await new Promise<void>((resolve) => this.server!.listen(this.socketPath, resolve));
  }

  setTarget(target: { host: string; port: number }): void {
    this.target = target;
  }

  private accept(client: net.Socket): void {
    if (this.refusing) {
      this.refused++;
      client.destroy();
      return;
    }
    this.connections++;
    const upstream = net.connect(this.target);
    const pair: Pair = { client, upstream, stalled: false };
    this.pairs.add(pair);
    // manual forwarding (not pipe) so a stalled pair can hold bytes without closing
    const forward = (from: net.Socket, to: net.Socket) =>
      from.on('data', (d) => {
        if (!pair.stalled) to.write(d);
      });
    forward(client, upstream);
    forward(upstream, client);
    const close = () => {
      client.destroy();
      upstream.destroy();
      this.pairs.delete(pair);
    };
    for (const s of [client, upstream]) {
      s.on('error', close);
      s.on('close', close);
    }
  }

  /** Cuts every open connection (RST-like: both sides destroyed). */
  cutAll(): number {
    const n = this.pairs.size;
    for (const p of [...this.pairs]) {
      p.client.destroy();
      p.upstream.destroy();
      this.pairs.delete(p);
    }
    this.cuts += n;
    return n;
  }

  /** New connections are closed at once while on. */
  refuse(on: boolean): void {
    this.refusing = on;
  }

  /** Open connections stop carrying bytes but stay open; new ones work normally. */
  stallExisting(): number {
    for (const p of this.pairs) p.stalled = true;
    return this.pairs.size;
  }

  /** Cuts a random open connection every interval (jittered) until stopped. */
  chaos(meanIntervalMs: number): void {
    this.stopChaos();
    const tick = () => {
      const list = [...this.pairs].filter((p) => !p.stalled);
      const victim = list[Math.floor(Math.random() * list.length)];
      if (victim) {
        victim.client.destroy();
        victim.upstream.destroy();
        this.pairs.delete(victim);
        this.cuts++;
      }
      this.chaosTimer = setTimeout(tick, meanIntervalMs * (0.5 + Math.random()));
    };
    this.chaosTimer = setTimeout(tick, meanIntervalMs);
  }

  stopChaos(): void {
    if (this.chaosTimer) clearTimeout(this.chaosTimer);
    this.chaosTimer = null;
  }

  async stop(): Promise<void> {
    this.stopChaos();
    this.cutAll();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
    await rm(this.socketPath, { force: true });
  }
}
