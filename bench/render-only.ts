import { ClusterState } from '../src/model/state.js';
import { IptablesRenderer } from '../src/render/iptables/ruleset.js';
import { silentLogger } from '../src/util/log.js';
import { baseConfig } from '../test/substrate/render-config.js';
import { syntheticChanges } from './synthetic.js';
const s = new ClusterState('node-a', silentLogger);
let t = performance.now();
for (const c of syntheticChanges(10000, 10)) s.apply(c);
console.log('apply', (performance.now() - t).toFixed(0), 'ms');
const v = s.view('IPv4');
t = performance.now();
for (const k of v.serviceKeys()) for (const sp of v.portsOf(k)) v.endpointsOf(sp);
console.log('endpoints merge', (performance.now() - t).toFixed(0), 'ms');
for (let i = 0; i < 4; i++) {
  const r = new IptablesRenderer();
  t = performance.now();
  r.render(s.view('IPv4'), { ...baseConfig, reducedComments: true }, 'all');
  console.log('render', (performance.now() - t).toFixed(0), 'ms');
}
global.gc?.();
console.log('rss', (process.memoryUsage().rss / 1048576).toFixed(0), 'heap', (process.memoryUsage().heapUsed / 1048576).toFixed(0));
