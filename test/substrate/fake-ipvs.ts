// An in-memory IPVS + ipset + dummy interface with the command surface kpx's IPVS mode
// uses (ipvsadm -Sn/-Ln/-R/--set, ipset save/restore, ip addr/link/-batch), for unit tests of
// the diff and the applier. iptables commands go to a FakeIptables. Like the kernel, it
// refuses duplicates (-A of an existing service, -a of an existing real server), edits
// and deletes of what is not there, and set members of the wrong shape.
import { inputText, type CommandInput, type CommandResult, type CommandRunner } from '../../src/apply/exec.js';
import { FakeIptables } from './fake-iptables.js';

interface Real {
  weight: number;
  /** active + inactive connections (tests set them) */
  conns: number;
}
interface Service {
  scheduler: string;
  persistence: number;
  reals: Map<string, Real>;
}

const ok = (stdout = ''): CommandResult => ({ exitCode: 0, stdout, stderr: '' });
const err = (stderr: string, exitCode = 1): CommandResult => ({ exitCode, stdout: '', stderr });

export class FakeIpvs implements CommandRunner {
  readonly iptables = new FakeIptables();
  /** "-t 198.19.0.10:80" -> service */
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
    for (const [key, s] of [...this.services].sort()) {
      out.push(`-A ${key} -s ${s.scheduler}${s.persistence ? ` -p ${s.persistence}` : ''}`);
      for (const [addr, r] of s.reals) out.push(`-a ${key} -r ${addr} -m -w ${r.weight}`);
    }
    return out.map((l) => `${l}\n`).join('');
  }

  private listIpvs(): string {
    const out = ['IP Virtual Server version 1.2.1 (size=4096)', 'Prot LocalAddress:Port Scheduler Flags', '  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn'];
    const name: Record<string, string> = { '-t': 'TCP', '-u': 'UDP', '--sctp-service': 'SCTP' };
    for (const [key, s] of this.services) {
      const [flag, addr] = key.split(' ') as [string, string];
      out.push(`${name[flag]}  ${addr} ${s.scheduler}${s.persistence ? ` persistent ${s.persistence}` : ''}`);
      for (const [ra, r] of s.reals) out.push(`  -> ${ra.padEnd(28)} Masq    ${r.weight}      ${r.conns}          0`);
    }
    return `${out.join('\n')}\n`;
  }

  private restoreIpvs(input: string): CommandResult {
    for (const line of input.split('\n').filter(Boolean)) {
      const t = line.split(' ');
      const key = `${t[1]} ${t[2]}`;
      const opt = (f: string) => (t.includes(f) ? t[t.indexOf(f) + 1] : undefined);
      const svc = this.services.get(key);
      switch (t[0]) {
        case '-A':
          if (svc) return err(`Memory allocation problem / Service already exists: ${line}`);
          this.services.set(key, { scheduler: opt('-s') ?? 'wlc', persistence: Number(opt('-p') ?? 0), reals: new Map() });
          break;
        case '-E':
          if (!svc) return err(`No such service: ${line}`);
          svc.scheduler = opt('-s') ?? svc.scheduler;
          svc.persistence = Number(opt('-p') ?? 0);
          break;
        case '-D':
          if (!svc) return err(`No such service: ${line}`);
          this.services.delete(key);
          break;
        case '-a':
        case '-e':
        case '-d': {
          if (!svc) return err(`No such service: ${line}`);
          const rs = opt('-r')!;
          const has = svc.reals.get(rs);
          if (t[0] === '-a') {
            if (has) return err(`Destination already exists: ${line}`);
            svc.reals.set(rs, { weight: Number(opt('-w') ?? 1), conns: 0 });
          } else if (!has) return err(`No such destination: ${line}`);
          else if (t[0] === '-e') has.weight = Number(opt('-w') ?? has.weight);
          else svc.reals.delete(rs);
          break;
        }
        default:
          return err(`fake ipvsadm: unsupported ${line}`);
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
      const t = line.split(' ');
      const name = t[1]!;
      const set = this.sets.get(name);
      const exist = t.includes('-exist');
      if (t[0] === 'create') {
        if (set && !exist) return err(`ipset v7.17: Set cannot be created: set with the same name already exists`);
        if (!set) this.sets.set(name, { type: t[2]!, family: t.includes('inet6') ? 'inet6' : 'inet', members: new Set() });
      } else if (t[0] === 'add' || t[0] === 'del') {
        if (!set) return err(`ipset v7.17: The set with the given name does not exist`);
        const m = t[2]!;
        if (!shape[set.type]!.test(m)) return err(`ipset v7.17: Syntax error: ${m} is not a ${set.type} member`);
        if (t[0] === 'add') {
          if (set.members.has(m) && !exist) return err(`ipset v7.17: Element cannot be added to the set: it's already added`);
          set.members.add(m);
        } else {
          if (!set.members.has(m) && !exist) return err(`ipset v7.17: Element cannot be deleted from the set: it's not added`);
          set.members.delete(m);
        }
      } else if (t[0] === 'destroy') {
        if (!set) return err(`ipset v7.17: The set with the given name does not exist`);
        this.sets.delete(name);
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
