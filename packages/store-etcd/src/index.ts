export { EtcdStore, type EtcdStoreOptions, openEtcdStore } from "./etcd-store";
