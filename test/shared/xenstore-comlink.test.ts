import test, { type ExecutionContext } from 'ava';
import { Worker } from 'node:worker_threads';
import { XenStore, type XsConnection } from '../../shared/xenstore.js';
import {
  XenstoreClient,
  exposeXenstoreConnection,
  withTransaction,
  type XenstoreChannel,
} from '../../shared/xenstore-client.js';
import {
  VifKey,
  XenbusDevice,
  XenbusStateClosed,
  XenbusStateClosing,
  XenbusStateConnected,
  XenbusStateInitWait,
  netbackFrontendChanged,
  toolstackAddVif,
  toolstackCreateDomain,
  vifBackendPath,
  vifFrontendPath,
} from '../../shared/xenbus.js';

const FE = 5;

function must<T>(r: { ok: true; value: T } | { ok: false; error: string }): T {
  if (!r.ok) throw new Error(r.error);
  return r.value;
}

interface Msg {
  type: string;
  [k: string]: unknown;
}

// Every message the worker posts, kept in order, so none is missed between two awaits.
function inbox(worker: Worker): (type: string) => Promise<Msg> {
  const queue: Msg[] = [];
  const waiters: { type: string; resolve: (m: Msg) => void; reject: (e: Error) => void }[] = [];
  const pump = (): void => {
    for (let i = 0; i < waiters.length; i++) {
      const w = waiters[i]!;
      const j = queue.findIndex((m) => m.type === w.type || m.type === 'error');
      if (j < 0) continue;
      const [m] = queue.splice(j, 1);
      waiters.splice(i--, 1);
      if (m!.type === 'error') w.reject(new Error(`worker: ${String(m!.error)}`));
      else w.resolve(m!);
    }
  };
  worker.on('message', (m: Msg) => {
    queue.push(m);
    pump();
  });
  worker.on('error', (e) => {
    for (const w of waiters.splice(0)) w.reject(e);
  });
  return (type) =>
    new Promise((resolve, reject) => {
      waiters.push({ type, resolve, reject });
      pump();
    });
}

function startWorker(t: ExecutionContext, channel: XenstoreChannel, scenario: string, gate: SharedArrayBuffer): Worker {
  const worker = new Worker(new URL('./fixtures/xenstore-worker.js', import.meta.url), {
    workerData: { ports: channel.ports, gate, scenario },
    transferList: channel.transferList,
  });
  t.teardown(async () => {
    await worker.terminate();
    channel.close();
  });
  return worker;
}

async function setup(): Promise<{ store: XenStore; dom0conn: XsConnection; dom0: XenstoreClient }> {
  const store = new XenStore();
  const dom0conn = must(store.connect(0));
  const dom0 = XenstoreClient.local(dom0conn);
  must(await toolstackCreateDomain(store, dom0, FE));
  return { store, dom0conn, dom0 };
}

test('a worker watches, gets EACCES as a result, and retries a transaction that answered EAGAIN', async (t) => {
  t.timeout(8000);
  const { store, dom0conn } = await setup();
  const home = `/local/domain/${FE}`;
  must(dom0conn.write(`${home}/data/counter`, '10'));
  const channel = must(exposeXenstoreConnection(store, FE));
  const gate = new SharedArrayBuffer(8);
  const flags = new Int32Array(gate);
  const worker = startWorker(t, channel, 'client', gate);
  const next = inbox(worker);

  await next('watching');
  must(dom0conn.write(`${home}/data/kick`, 'go'));
  // The worker has read the counter inside its transaction: change it underneath, then let it commit.
  const w = Atomics.waitAsync(flags, 0, 0);
  if (w.async) await w.value;
  must(dom0conn.write(`${home}/data/counter`, '100'));
  Atomics.store(flags, 1, 1);
  Atomics.notify(flags, 1);

  const done = await next('done');
  t.deepEqual(done.events, [
    [`${home}/data/kick`, 'w1'],
    [`${home}/data/kick`, 'w1'],
  ]);
  t.is(done.denied, 'EACCES');
  t.deepEqual(done.results, ['EAGAIN', 'ok']);
  t.is(done.counter, '101');
  t.deepEqual(store.domainUsage(FE), { watches: 1, transactions: 0 });

  await worker.terminate();
  await channel.closed;
  t.deepEqual(store.domainUsage(FE), { watches: 0, transactions: 0 }, 'the connection closed with the worker');
});

test('only the protocol methods are reachable from the worker side', async (t) => {
  const { store } = await setup();
  const channel = must(exposeXenstoreConnection(store, FE));
  const client = XenstoreClient.remote(channel.ports);
  t.teardown(() => {
    client.close();
    channel.close();
  });
  t.deepEqual(await client.read('data'), { ok: true, value: '' });
  t.deepEqual(await client.write('data/x', 7 as unknown as string), { ok: false, error: 'EINVAL' });
  const remote = (client as unknown as { api: Record<string, unknown> }).api;
  await t.throwsAsync(async () => (remote.setWatchSink as () => Promise<void>)(), undefined, 'setWatchSink is not exposed');
  t.is(exposeXenstoreConnection(store, 42).ok, false);
});

test('a netfront in a worker connects to a backend in the main thread, then follows it to Closed', async (t) => {
  t.timeout(8000);
  const { store, dom0 } = await setup();
  must(await toolstackAddVif(dom0, { frontendDomid: FE, backendDomid: 0, devid: 0, mac: '00:16:3e:00:00:05' }));
  const be = must(await XenbusDevice.open(dom0, 'backend', vifBackendPath(0, FE, 0)));
  t.teardown(() => be.close());
  be.onOtherendChanged(async (state, vanished) => {
    const reaction = netbackFrontendChanged(state, true, vanished);
    if (reaction.target !== null) must(await be.setBackendState(reaction.target));
  });
  must(await be.switchState(XenbusStateInitWait));

  const channel = must(exposeXenstoreConnection(store, FE));
  const worker = startWorker(t, channel, 'frontend', new SharedArrayBuffer(8));
  const next = inbox(worker);
  await next('connected');
  t.is(be.state, XenbusStateConnected);
  t.is(must(await dom0.read(`${vifFrontendPath(FE, 0)}/${VifKey.txRingRef}`)), '8');

  must(await be.setBackendState(XenbusStateClosed));
  const closed = await next('closed');
  t.is(closed.state, XenbusStateClosed);
  // The backend passes Closing on its way to Closed; the frontend may read either when it reacts.
  t.true(closed.backend === XenbusStateClosing || closed.backend === XenbusStateClosed);
});

test('withTransaction retries a conflicting commit, returns body errors, and gives up after maxAttempts', async (t) => {
  const { store, dom0conn } = await setup();
  const c5 = XenstoreClient.local(must(store.connect(FE)));
  const key = `/local/domain/${FE}/data/n`;
  must(dom0conn.write(key, '1'));
  let attempts = 0;
  const bump = async (tx: number) => {
    attempts++;
    const v = must(await c5.read(key, tx));
    // Someone else changes the node under the first two attempts.
    if (attempts <= 2) must(dom0conn.write(key, String(Number(v) * 10)));
    return c5.write(key, String(Number(v) + 1), tx);
  };
  t.deepEqual(await withTransaction(c5, bump), { ok: true, value: undefined });
  t.is(attempts, 3);
  t.is(must(await c5.read(key)), '101');
  attempts = 0;
  t.deepEqual(await withTransaction(c5, bump, 2), { ok: false, error: 'EAGAIN' });
  t.is(attempts, 2);
  t.deepEqual(await withTransaction(c5, (tx) => c5.read('/local/domain/0', tx)), { ok: false, error: 'EACCES' });
  t.deepEqual(store.domainUsage(FE), { watches: 0, transactions: 0 }, 'every transaction was ended');
});
