// Migration from kube-proxy, on the real kernel: a node programmed by kube-proxy (iptables
// mode, with IPVS-mode leftovers and kubelet's own chains) takes kpx; kpx's rules win at once;
// `kpx cleanup --kube-proxy` removes kube-proxy's state only, while kpx keeps serving.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NET, Topology, dataplaneEnv } from '../substrate/netns.js';
import { endpointSlice, node, service, yamlDocs } from '../substrate/manifests.js';

const env = await dataplaneEnv();
const WEB_IP = '198.19.0.10';
const pods = { 'web-a': '198.18.1.11', 'web-b': '198.18.1.12', client: '198.18.1.50' };
const SVC = 'KUBE-SVC-ERIFXISQEP7F7OF4';
const SEP = 'KUBE-SEP-ZXMNUKOKXUTL2MK2';

/** What kube-proxy's iptables mode leaves for one ClusterIP service -> web-b (nat + filter). */
const KUBE_PROXY_NAT = `*nat
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-CANARY - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-MARK-DROP - [0:0]
:${SVC} - [0:0]
:${SEP} - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-MARK-DROP -j MARK --set-xmark 0x8000/0x8000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-SERVICES -d ${WEB_IP}/32 -p tcp -m comment --comment "default/web:http cluster IP" -m tcp --dport 80 -j ${SVC}
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT
-A ${SVC} ! -s ${NET.podCIDR} -d ${WEB_IP}/32 -p tcp -m tcp --dport 80 -j KUBE-MARK-MASQ
-A ${SVC} -j ${SEP}
-A ${SEP} -s ${pods['web-b']}/32 -j KUBE-MARK-MASQ
-A ${SEP} -p tcp -m tcp -j DNAT --to-destination ${pods['web-b']}:8080
COMMIT
*filter
:KUBE-FIREWALL - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-PROXY-CANARY - [0:0]
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A INPUT -j KUBE-FIREWALL
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -j KUBE-FIREWALL
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m mark --mark 0x4000/0x4000 -j ACCEPT
COMMIT
*mangle
:KUBE-IPTABLES-HINT - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-PROXY-CANARY - [0:0]
COMMIT
`;

const KUBELET_CHAINS = ['KUBE-FIREWALL', 'KUBE-KUBELET-CANARY', 'KUBE-IPTABLES-HINT', 'KUBE-MARK-DROP'];
const KUBE_PROXY_CHAINS = ['KUBE-SERVICES', 'KUBE-POSTROUTING', 'KUBE-MARK-MASQ', 'KUBE-NODEPORTS', 'KUBE-PROXY-CANARY', 'KUBE-FORWARD', 'KUBE-EXTERNAL-SERVICES', 'KUBE-PROXY-FIREWALL', SVC, SEP];
const USER_RULE = '-A INPUT -p tcp -m tcp --dport 7778 -j ACCEPT';

/** iptables-save output without its timestamp comments and counters */
const stable = (save: string) => save.replace(/^#.*\n?/gm, '').replace(/\[\d+:\d+\]/g, '');
const chainsIn = (save: string) => new Set([...save.matchAll(/^:(\S+) /gm)].map((m) => m[1]));

describe.skipIf(!env.ok)(`migration from kube-proxy${env.ok ? '' : ` — skipped: ${env.reason}`}`, () => {
  let t: Topology;
  let dir: string;
  const flags = () => ['--manifests', dir, '--hostname-override', 'node-a', '--cluster-cidr', NET.podCIDR, '--metrics-bind-address', '', '--healthz-bind-address', ''];

  beforeAll(async () => {
    t = await Topology.create({
      pods: [
        { name: 'web-a', ip: pods['web-a'], ports: [8080] },
        { name: 'web-b', ip: pods['web-b'], ports: [8080] },
        { name: 'client', ip: pods.client },
      ],
    });
    dir = await t.manifestsDir();
    await t.writeManifest(dir, 'node.yaml', yamlDocs(node({ ips: [NET.nodeIP], podCIDRs: [NET.podCIDR] })));
    await t.writeManifest(
      dir,
      'web.yaml',
      yamlDocs(
        service({ name: 'web', clusterIP: WEB_IP, ports: [{ name: 'http', port: 80, targetPort: 8080 }] }),
        endpointSlice({ service: 'web', ports: [{ name: 'http', port: 8080 }], endpoints: [{ ip: pods['web-a'] }] }),
      ),
    );
    // kube-proxy's state: its IPVS-mode set and dummy interface, then its rules (the set must exist first)
    await t.exec('node', 'ipset', ['create', 'KUBE-CLUSTER-IP', 'hash:ip,port']);
    await t.exec('node', 'ipset', ['add', 'KUBE-CLUSTER-IP', `198.19.0.99,tcp:80`]);
    await t.exec('node', 'ipset', ['create', 'USER-SET', 'hash:ip']);
    // kube-proxy makes it a dummy; this kernel has no dummy driver, and cleanup goes by name
    await t.exec('node', 'ip', ['link', 'add', 'kube-ipvs0', 'type', 'bridge']);
    await t.exec('node', 'ip', ['addr', 'add', '198.19.0.99/32', 'dev', 'kube-ipvs0']);
    await t.exec('node', 'iptables-nft-restore', ['--noflush'], { input: KUBE_PROXY_NAT });
    await t.exec('node', 'iptables-nft', USER_RULE.split(' '));
    // a leftover from kube-proxy running on the legacy backend once
    await t.exec('node', 'iptables-legacy-restore', ['--noflush'], {
      input: `*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-MARK-DROP - [0:0]\n-A PREROUTING -j KUBE-SERVICES\nCOMMIT\n`,
    });
  });
  afterAll(async () => {
    await t?.destroy();
  });

  it("kube-proxy's rules serve first; kpx's take over on its first sync; cleanup --kube-proxy leaves kpx, kubelet and user state", async () => {
    // before: kube-proxy's rules send the ClusterIP to web-b
    expect((await t.probe('client', 'tcp', WEB_IP, 80, { count: 10 })).names).toEqual({ 'web-b': 10 });

    // kpx starts (kube-proxy's rules still there): its jumps come first, so its endpoints answer
    expect((await t.kpx(['run', '--once', ...flags()])).exitCode).toBe(0);
    expect((await t.probe('client', 'tcp', WEB_IP, 80, { count: 10 })).names).toEqual({ 'web-a': 10 });

    const cleanup = await t.kpx(['cleanup', '--kube-proxy']);
    expect(cleanup.exitCode).toBe(0);
    const after = await t.save();
    const chains = chainsIn(after);
    for (const c of KUBE_PROXY_CHAINS) expect(chains.has(c), `${c} removed`).toBe(false);
    expect(after).not.toMatch(/-j KUBE-(SERVICES|POSTROUTING|NODEPORTS|FORWARD|PROXY-FIREWALL|EXTERNAL-SERVICES)\b/);
    // kubelet's chains and their rules stay, and so do the user's rule and kpx's rules
    for (const c of KUBELET_CHAINS) expect(chains.has(c), `${c} kept`).toBe(true);
    expect(after).toContain('-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8');
    expect(after).toContain('-A INPUT -j KUBE-FIREWALL');
    expect(after).toContain('-A KUBE-MARK-DROP -j MARK --set-xmark 0x8000/0x8000');
    expect(after).toContain(USER_RULE);
    expect(after).toContain(':KPX-SERVICES');
    const legacy = await t.save('IPv4', 'legacy');
    expect(legacy).not.toContain('KUBE-SERVICES');
    expect(legacy).toContain(':KUBE-MARK-DROP');
    // IPVS-mode leftovers: kube-proxy's set and dummy interface go, the user's set stays
    const sets = (await t.exec('node', 'ipset', ['list', '-n'])).stdout.split('\n');
    expect(sets).not.toContain('KUBE-CLUSTER-IP');
    expect(sets).toContain('USER-SET');
    expect((await t.exec('node', 'ip', ['link', 'show', 'kube-ipvs0'], { reject: false })).exitCode).not.toBe(0);

    // kpx kept serving through it all
    expect((await t.probe('client', 'tcp', WEB_IP, 80, { count: 10 })).names).toEqual({ 'web-a': 10 });

    // idempotent: a second run changes nothing
    expect((await t.kpx(['cleanup', '--kube-proxy'])).exitCode).toBe(0);
    expect(stable(await t.save())).toBe(stable(after));
  });
});
