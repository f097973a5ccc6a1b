// Which iptables backend (nft or legacy) the node uses, decided like kube-proxy's image
// does: kubelet's hint chains first, then where rules already are, else nft.
import type { IPFamily } from '../util/ip.js';
import type { CommandRunner } from './exec.js';

export type IptablesBackend = 'nft' | 'legacy';

export interface IptablesBinaries {
  readonly restore: string;
  readonly save: string;
  readonly iptables: string;
}

export function binaries(family: IPFamily, backend: IptablesBackend): IptablesBinaries {
  const base = family === 'IPv4' ? 'iptables' : 'ip6tables';
  return {
    restore: `${base}-${backend}-restore`,
    save: `${base}-${backend}-save`,
    iptables: `${base}-${backend}`,
  };
}

const HINT = /^:(KUBE-IPTABLES-HINT|KUBE-KUBELET-CANARY) /m;

function ruleLines(text: string): number {
  let n = 0;
  for (const line of text.split('\n')) if (line.startsWith('-A ')) n++;
  return n;
}

export async function detectBackend(runner: CommandRunner): Promise<{ backend: IptablesBackend; reason: string }> {
  const save = async (cmd: string, args: string[]) => {
    const r = await runner.run(cmd, args).catch(() => null);
    return r && r.exitCode === 0 ? r.stdout : '';
  };
  for (const cmd of ['iptables-nft-save', 'ip6tables-nft-save']) {
    if (HINT.test(await save(cmd, ['-t', 'mangle']))) return { backend: 'nft', reason: `kubelet hint chain in ${cmd} -t mangle` };
  }
  // Listing all tables (no -t) so legacy does not create the mangle table.
  const legacy = (await save('iptables-legacy-save', [])) + (await save('ip6tables-legacy-save', []));
  if (HINT.test(legacy)) return { backend: 'legacy', reason: 'kubelet hint chain in iptables-legacy-save' };
  const legacyRules = ruleLines(legacy);
  if (legacyRules > 0) {
    const nft = (await save('iptables-nft-save', [])) + (await save('ip6tables-nft-save', []));
    if (legacyRules >= ruleLines(nft)) {
      return { backend: 'legacy', reason: `${legacyRules} rules in legacy, ${ruleLines(nft)} in nft` };
    }
  }
  return { backend: 'nft', reason: 'default (no hint, no legacy rules)' };
}

/** --random-fully needs iptables >= 1.6.2. */
export async function supportsRandomFully(runner: CommandRunner, family: IPFamily, backend: IptablesBackend): Promise<boolean> {
  const r = await runner.run(binaries(family, backend).iptables, ['--version']).catch(() => null);
  const m = /v(\d+)\.(\d+)\.(\d+)/.exec(r?.stdout ?? '');
  if (!m) return false;
  const [maj, min, pat] = [Number(m[1]), Number(m[2]), Number(m[3])];
  return maj > 1 || (maj === 1 && (min > 6 || (min === 6 && pat >= 2)));
}
