// The e2e scenarios on a real cluster running kpx: a kind cluster from hack/kind/e2e.sh
// (E2E_SUITE=1 sets KPX_E2E_KUBECONFIG and KPX_E2E_KIND_CLUSTER and runs this file).
// It needs Docker, kind and kubectl. It has never run: this project's machines have no
// Docker engine, so here it skips.
import { existsSync } from 'node:fs';
import { e2eSuite } from './scenarios.js';
import { KindCluster } from './kind-cluster.js';

const kubeconfig = process.env.KPX_E2E_KUBECONFIG ?? '';
const skip = !kubeconfig
  ? `KPX_E2E_KUBECONFIG is not set: this suite runs against a kind cluster running kpx (hack/kind/e2e.sh with E2E_SUITE=1${existsSync('/var/run/docker.sock') ? '' : '; no Docker engine on this machine'})`
  : existsSync(kubeconfig)
    ? ''
    : `KPX_E2E_KUBECONFIG=${kubeconfig} does not exist`;
e2eSuite(`kind cluster`, skip, () => KindCluster.connect(kubeconfig, process.env.KPX_E2E_KIND_CLUSTER ?? 'kpx-e2e'), { timeoutScale: 4 });
