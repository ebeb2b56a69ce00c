import { type MessageEvent, WebSocket } from "undici";

/** A DevTools-protocol session with a Node process started with `--inspect`. */
export interface Inspector {
  /** A full, synchronous garbage collection in the inspected process (`HeapProfiler.collectGarbage`). */
  collectGarbage(): Promise<void>;
  close(): void;
}

/** Connects to the inspector at `wsUrl` (the `ws://…` of "Debugger listening on"). */
export async function openInspector(wsUrl: string): Promise<Inspector> {
  const socket = new WebSocket(wsUrl);
  await new Promise<void>((resolve, reject) => {
    socket.addEventListener("open", () => resolve(), { once: true });
    socket.addEventListener("error", () => reject(new Error(`cannot connect to the inspector at ${wsUrl}`)), { once: true });
  });
  let lastId = 0;
  const call = (method: string) =>
    new Promise<void>((resolve, reject) => {
      const id = ++lastId;
      const onMessage = (event: MessageEvent) => {
        const message = JSON.parse(String(event.data)) as { id?: number; error?: { message: string } };
        if (message.id !== id) return;
        socket.removeEventListener("message", onMessage);
        if (message.error === undefined) resolve();
        else reject(new Error(`inspector ${method}: ${message.error.message}`));
      };
      socket.addEventListener("message", onMessage);
      socket.send(JSON.stringify({ id, method }));
    });
  return { collectGarbage: () => call("HeapProfiler.collectGarbage"), close: () => socket.close() };
}
