// An in-memory IPVS + ipset + dummy interface with the command surface kpx's IPVS mode
// uses (ipvsadm -Sn/-Ln/-R/--set, ipset save/restore, ip addr/link/-batch), for unit tests of
// the diff and the applier. iptables commands go to a FakeIptables. Like the kernel, it
// refuses duplicates (-A of an existing service, -a of an existing real server), edits
// and deletes of what is not there, and set members of the wrong shape. It reads and
// writes ipvsadm and ipset lines with kpx's own parsers and writers (src/ipvs/format.ts).
import { inputText, type CommandInput, type CommandResult, type CommandRunner } from '../../src/apply/exec.js';
import { FakeIptables } from './fake-iptables.js';
import { parseIpsetLine, parseIpvsLine, rsLine, vsLine, vsTarget } from '../../src/ipvs/format.js';
import type { IpvsProto } from '../../src/render/ipvs/ipvs.js';
import { joinHostPort } from '../../src/util/ip.js';

interface Real {
  readonly ip: string;
  readonly port: number;
  weight: number;
  /** active + inactive connections (tests set them) */
  conns: number;
}
interface Service {
  readonly proto: IpvsProto;
  readonly ip: string;
  readonly port: number;
  scheduler: string;
  persistence: number;
  /** "ip:port" -> real server */
  reals: Map<string, Real>;
}

const ok = (stdout = ''): CommandResult => ({ exitCode: 0, stdout, stderr: '' });
const err = (stderr: string, exitCode = 1): CommandResult => ({ exitCode, stdout: '', stderr });

export class FakeIpvs implements CommandRunner {
  readonly iptables = new FakeIptables();
  /** "-t 198.19.0.10:80" (vsTarget) -> service */
  readonly services = new Map<string, Service>();
  readonly sets = new Map<string, { type: string; family: string; members: Set<string> }>();
  device: Set<string> | null = null;
  readonly calls: Array<{ command: string; args: readonly string[]; input?: string }> = [];
  timeouts: string[] = [];

  async run(command: string, args: readonly string[], options: { input?: CommandInput } = {}): Promise<CommandResult> {
    // a generated input can be read once: read it here
    const opts = options.input === undefined ? {} : { input: inputText(options.input) };
    if (command === 'ipvsadm') {
      this.calls.push({ command, args, ...opts });
      if (args[0] === '-Sn') return ok(this.saveIpvs());
      if (args[0] === '-Ln') return ok(this.listIpvs());
      if (args[0] === '--set') return (this.timeouts = args.slice(1)), ok();
      if (args[0] === '-R') return this.restoreIpvs(opts.input ?? '');
    }
    if (command === 'ipset') {
      this.calls.push({ command, args, ...opts });
      if (args[0] === 'save') return ok(this.saveSets());
      if (args[0] === 'restore') return this.restoreSets(opts.input ?? '');
    }
    if (command === 'ip') {
      this.calls.push({ command, args, ...opts });
      const a = args.join(' ');
      if (/^-o -[46] addr show dev kpx-ipvs0$/.test(a)) {
        if (!this.device) return err('Device "kpx-ipvs0" does not exist.');
        const v6 = args[1] === '-6';
        return ok([...this.device].filter((x) => x.includes(':') === v6).map((x) => `9: kpx-ipvs0    inet${v6 ? "6" : ""} ${x}/${v6 ? 128 : 32} scope global kpx-ipvs0\\       valid_lft forever preferred_lft forever\n`).join(''));
      }
      if (a === 'link add kpx-ipvs0 type dummy') return this.device ? err('RTNETLINK answers: File exists', 2) : ((this.device = new Set()), ok());
      if (a === 'link del kpx-ipvs0') return this.device ? ((this.device = null), ok()) : err('Cannot find device "kpx-ipvs0"');
      if (a === '-force -batch -') return this.ipBatch(opts.input ?? '');
    }
    return this.iptables.run(command, args, opts);
  }

  /** the whole IPVS table as text, for equality checks */
  snapshot(): string {
    return this.saveIpvs();
  }

  setConnections(vs: string, real: string, conns: number): void {
    const r = this.services.get(vs)?.reals.get(real);
    if (!r) throw new Error(`no real server ${real} in ${vs}`);
    r.conns = conns;
  }

  ipvsRestores(): string[] {
    return this.calls.filter((c) => c.command === 'ipvsadm' && c.args[0] === '-R').map((c) => c.input ?? '');
  }

  private saveIpvs(): string {
    const out: string[] = [];
    for (const [, s] of [...this.services].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
      out.push(vsLine('-A', s));
      for (const r of s.reals.values()) out.push(rsLine('-a', s, r));
    }
    return out.map((l) => `${l}\n`).join('');
  }

  private listIpvs(): string {
    const out = ['IP Virtual Server version 1.2.1 (size=4096)', 'Prot LocalAddress:Port Scheduler Flags', '  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn'];
    for (const s of this.services.values()) {
      out.push(`${s.proto.toUpperCase()}  ${joinHostPort(s.ip, s.port)} ${s.scheduler}${s.persistence ? ` persistent ${s.persistence}` : ''}`);
      for (const [ra, r] of s.reals) out.push(`  -> ${ra.padEnd(28)} Masq    ${r.weight}      ${r.conns}          0`);
    }
    return `${out.join('\n')}\n`;
  }

  private restoreIpvs(input: string): CommandResult {
    for (const line of input.split('\n').filter(Boolean)) {
      const l = parseIpvsLine(line);
      if (!l) return err(`fake ipvsadm: unsupported ${line}`);
      const key = vsTarget(l);
      const svc = this.services.get(key);
      switch (l.cmd) {
        case '-A':
          if (svc) return err(`Memory allocation problem / Service already exists: ${line}`);
          this.services.set(key, { proto: l.proto, ip: l.ip, port: l.port, scheduler: l.scheduler ?? 'wlc', persistence: l.persistence ?? 0, reals: new Map() });
          break;
        case '-E':
          if (!svc) return err(`No such service: ${line}`);
          svc.scheduler = l.scheduler ?? svc.scheduler;
          svc.persistence = l.persistence ?? 0;
          break;
        case '-D':
          if (!svc) return err(`No such service: ${line}`);
          this.services.delete(key);
          break;
        default: {
          if (!svc) return err(`No such service: ${line}`);
          if (!l.real) return err(`fake ipvsadm: no real server in ${line}`);
          const rs = joinHostPort(l.real.ip, l.real.port);
          const has = svc.reals.get(rs);
          if (l.cmd === '-a') {
            if (has) return err(`Destination already exists: ${line}`);
            svc.reals.set(rs, { ...l.real, weight: l.weight ?? 1, conns: 0 });
          } else if (!has) return err(`No such destination: ${line}`);
          else if (l.cmd === '-e') has.weight = l.weight ?? has.weight;
          else svc.reals.delete(rs);
        }
      }
    }
    return ok();
  }

  private saveSets(): string {
    const out: string[] = [];
    for (const [name, s] of this.sets) {
      out.push(s.type === 'bitmap:port' ? `create ${name} bitmap:port range 0-65535` : `create ${name} ${s.type} family ${s.family} hashsize 1024 maxelem 65536`);
      for (const m of s.members) out.push(`add ${name} ${m}`);
    }
    return out.map((l) => `${l}\n`).join('');
  }

  private restoreSets(input: string): CommandResult {
    const shape: Record<string, RegExp> = {
      'hash:ip': /^[0-9a-f.:]+$/,
      'hash:ip,port': /^[0-9a-f.:]+,(tcp|udp|sctp):\d+$/,
      'hash:ip,port,ip': /^[0-9a-f.:]+,(tcp|udp|sctp):\d+,[0-9a-f.:]+$/,
      'hash:ip,port,net': /^[0-9a-f.:]+,(tcp|udp|sctp):\d+,[0-9a-f.:]+(\/\d+)?$/,
      'bitmap:port': /^\d+$/,
    };
    for (const line of input.split('\n').filter(Boolean)) {
      const l = parseIpsetLine(line);
      if (!l) return err(`fake ipset: unsupported ${line}`);
      const set = this.sets.get(l.set);
      if (l.op === 'create') {
        if (set && !l.exist) return err(`ipset v7.17: Set cannot be created: set with the same name already exists`);
        if (!set) this.sets.set(l.set, { type: l.type ?? '', family: l.family === 'IPv6' ? 'inet6' : 'inet', members: new Set() });
      } else if (l.op === 'add' || l.op === 'del') {
        if (!set) return err(`ipset v7.17: The set with the given name does not exist`);
        const m = l.member ?? '';
        if (!shape[set.type]!.test(m)) return err(`ipset v7.17: Syntax error: ${m} is not a ${set.type} member`);
        if (l.op === 'add') {
          if (set.members.has(m) && !l.exist) return err(`ipset v7.17: Element cannot be added to the set: it's already added`);
          set.members.add(m);
        } else {
          if (!set.members.has(m) && !l.exist) return err(`ipset v7.17: Element cannot be deleted from the set: it's not added`);
          set.members.delete(m);
        }
      } else if (l.op === 'destroy') {
        if (!set) return err(`ipset v7.17: The set with the given name does not exist`);
        this.sets.delete(l.set);
      } else return err(`fake ipset: unsupported ${line}`);
    }
    return ok();
  }

  private ipBatch(input: string): CommandResult {
    for (const line of input.split('\n').filter(Boolean)) {
      const m = /^address (add|del) (\S+)\/\d+ dev kpx-ipvs0( nodad)?$/.exec(line);
      if (!m || !this.device) return err(`fake ip: unsupported ${line}`);
      if (m[1] === 'add') this.device.add(m[2]!);
      else this.device.delete(m[2]!);
    }
    return ok();
  }
}
