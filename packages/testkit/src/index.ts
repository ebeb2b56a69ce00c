export { checkLinearizable, type CheckResult } from "./check-linearizable";
export { type Event, type Op, formatEvent, formatHistory } from "./history";
export { createRandom, testSeed } from "./random";
export { assertLinearizable, recordHistory, type RecordHistoryOptions } from "./record-history";
export { SimNetwork, type SimClock, type SimFaults, type SimNetworkOptions, type SimServer, type SimStats } from "./sim-network";
export {
  createFaultProxy,
  type FaultProxy,
  type FaultProxyOptions,
  type FaultProxyStats,
  type FaultRates,
  type ProxyFaults,
} from "./fault-proxy";
export {
  findServerEntry,
  spawnServerProcess,
  startServerProcess,
  type ServerProcess,
  type ServerProcessOptions,
  type SpawnedServer,
} from "./server-process";
export { describeStoreConformance, type StoreConformanceOptions } from "./store-conformance";
export { type EtcdCluster, type EtcdClusterOptions, type EtcdMember, startEtcdCluster } from "./etcd-cluster";
export { createTestCertificates, type TestCertificates } from "./certificates";
