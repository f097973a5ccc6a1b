import v8 from 'node:v8';
if (process.env.SEMI) v8.setFlagsFromString(`--max-semi-space-size=${process.env.SEMI}`);
const { ClusterState } = await import('../src/model/state.js');
const { IptablesRenderer } = await import('../src/render/iptables/ruleset.js');
const { silentLogger } = await import('../src/util/log.js');
const { baseConfig } = await import('../test/substrate/render-config.js');
const { syntheticChanges } = await import('./synthetic.js');
const s = new ClusterState('node-a', silentLogger);
let t = performance.now();
for (const c of syntheticChanges(10000, 10)) s.apply(c);
const apply = performance.now() - t;
const v = s.view('IPv4');
for (const k of v.serviceKeys()) for (const sp of v.portsOf(k)) v.endpointsOf(sp);
const times: number[] = [];
for (let i = 0; i < 4; i++) {
  const r = new IptablesRenderer();
  t = performance.now();
  r.render(s.view('IPv4'), { ...baseConfig, reducedComments: true }, 'all');
  times.push(performance.now() - t);
}
console.log(`SEMI=${process.env.SEMI ?? '-'} apply ${apply.toFixed(0)} renders ${times.map((x) => x.toFixed(0)).join(' ')} rss ${(process.memoryUsage().rss / 1048576).toFixed(0)}`);
