// S5: a lock passed among contenders, each its own client (as separate processes would be):
// acquire → release, no work held. @kv/lock on kv (LMDB, the default store: durable, like etcd)
// against etcd3's lock on etcd.
import { backoffMs, createClerk } from "@kv/clerk";
import { createLock } from "@kv/lock";
import { Etcd3, EtcdLockFailedError } from "etcd3";
import { compare, type Contender } from "./load";
import { withResources } from "./resources";
import { figuresOf, type ScenarioResult, throughputRatio } from "./results";
import type { Settings } from "./settings";
import { startEtcd, startKv } from "./systems";

// etcd3's `lock(key).acquire()` is a try-lock: it rejects EtcdLockFailedError while another
// holds the key, and its user must retry. It retries here on @kv/lock's own schedule (a random
// wait up to 5 ms, doubling to 250 ms), so both sides wait alike and the figures compare the
// lock protocols, not two waiting policies.
const WAIT_BASE_MS = 5;
const WAIT_MAX_MS = 250;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export async function s5(settings: Settings): Promise<Omit<ScenarioResult, "seconds">> {
  const contenders = settings.lockContenders;
  return withResources(async (r) => {
    const kv = r.add(await startKv("lmdb"), (s) => s.stop());
    const etcdServer = r.add(await startEtcd(), (s) => s.stop());

    const kvLocks = Array.from({ length: contenders }, () => {
      const clerk = r.add(createClerk({ endpoints: [kv.url] }), (c) => c.close());
      return createLock(clerk, "s5-lock");
    });
    const kvLock: Contender = {
      name: "@kv/lock",
      serverPids: kv.pids,
      op: async (worker) => {
        const lock = kvLocks[worker];
        if (lock === undefined) throw new Error(`no lock for contender ${worker}`);
        const asked = performance.now();
        await lock.acquire();
        const waitMs = performance.now() - asked;
        await lock.release();
        return waitMs;
      },
    };

    const etcdClients = Array.from({ length: contenders }, () => r.add(new Etcd3({ hosts: etcdServer.url }), (c) => c.close()));
    const etcdLock: Contender = {
      name: "etcd3 lock",
      serverPids: etcdServer.pids,
      op: async (worker) => {
        const client = etcdClients[worker];
        if (client === undefined) throw new Error(`no etcd client for contender ${worker}`);
        const asked = performance.now();
        for (let attempt = 0; ; attempt++) {
          const lock = client.lock("s5-lock");
          try {
            await lock.acquire();
          } catch (err) {
            if (!(err instanceof EtcdLockFailedError)) throw err;
            await sleep(backoffMs(attempt, WAIT_BASE_MS, WAIT_MAX_MS));
            continue;
          }
          const waitMs = performance.now() - asked;
          await lock.release();
          return waitMs;
        }
      },
    };

    const systems = await compare([kvLock, etcdLock], {
      workers: contenders,
      rounds: settings.rounds,
      warmupCount: Math.max(1, Math.round(settings.lockAcquisitions / 10)),
      roundCount: settings.lockAcquisitions,
    });
    return {
      id: "S5",
      title: `lock handoffs: ${contenders} contenders × ${settings.lockAcquisitions} acquisitions per round, acquire → release`,
      measures: "handoffs/s; p50/p99: acquire wait",
      systems,
      figures: [],
      ratios: [
        { label: "kv ÷ etcd3 handoffs/s", value: throughputRatio(systems, "@kv/lock", "etcd3 lock"), goal: { min: 1 } },
        { label: "kv ÷ etcd3 wait p99", value: figuresOf(systems, "@kv/lock").p99Ms / figuresOf(systems, "etcd3 lock").p99Ms },
      ],
    };
  });
}
