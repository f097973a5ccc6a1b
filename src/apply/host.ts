// Facts about, and settings of, the network namespace kpx runs in. kpx runs in the node's
// namespace (hostNetwork), so /proc/sys/net here is the node's; tests run it in their own.
import { networkInterfaces } from 'node:os';
import { readFile, writeFile } from 'node:fs/promises';
import type { Logger } from '../util/log.js';
import { parseIP, type IPFamily } from '../util/ip.js';

export interface HostFacts {
  /** addresses on this namespace's interfaces (no link-local IPv6), by family */
  readonly addresses: Readonly<Record<IPFamily, readonly string[]>>;
}

/** `excludeDevice`: leave out one interface's addresses (the IPVS mode's dummy). */
export function readHostFacts(opts: { excludeDevice?: string } = {}): HostFacts {
  const addresses: Record<IPFamily, string[]> = { IPv4: [], IPv6: [] };
  for (const [name, list] of Object.entries(networkInterfaces())) {
    if (name === opts.excludeDevice) continue;
    for (const a of list ?? []) {
      const ip = parseIP(a.address);
      if (!ip) continue;
      if (ip.family === 'IPv6' && ip.text.toLowerCase().startsWith('fe80:')) continue;
      if (!addresses[ip.family].includes(ip.text)) addresses[ip.family].push(ip.text);
    }
  }
  addresses.IPv4.sort();
  addresses.IPv6.sort();
  return { addresses };
}

const path = (name: string) => `/proc/sys/${name.replaceAll('.', '/')}`;

export async function readSysctl(name: string): Promise<string | null> {
  try {
    return (await readFile(path(name), 'utf8')).trim();
  } catch {
    return null;
  }
}

/** Sets a sysctl if it differs; returns false (and logs) when it cannot. */
export async function ensureSysctl(name: string, value: string, log: Logger): Promise<boolean> {
  const cur = await readSysctl(name);
  if (cur === value) return true;
  try {
    await writeFile(path(name), value);
    log.info({ sysctl: name, from: cur, to: value }, 'set sysctl');
    return true;
  } catch (err) {
    log.error({ sysctl: name, value, err: (err as Error).message }, 'cannot set sysctl');
    return false;
  }
}
