// Committed vif state writes, exactly: outside a transaction at once, inside one only when it commits.
import test from 'ava';
import { XenStore } from '../../../shared/xenstore.js';
import { XenstoreClient, withTransaction } from '../../../shared/xenstore-client.js';
import { StateLoggingClient, vifOfStatePath } from '../../../tools/sim/xenbus-log.js';

function client(): { xs: StateLoggingClient; seen: string[]; raw: XenstoreClient } {
  const store = new XenStore();
  const conn = store.connect(0);
  if (!conn.ok) throw new Error(conn.error);
  const raw = XenstoreClient.local(conn.value);
  const seen: string[] = [];
  return { xs: new StateLoggingClient(raw, (vif, state) => seen.push(`${vif} ${state}`)), seen, raw };
}

test('vifOfStatePath: frontend and backend state keys name their vif; anything else is not a state key', (t) => {
  t.is(vifOfStatePath('/local/domain/3/device/vif/0/state'), 'vif3.0');
  t.is(vifOfStatePath('/local/domain/0/backend/vif/3/1/state'), 'vif3.1');
  t.is(vifOfStatePath('/local/domain/3/device/vif/0/tx-ring-ref'), null);
  t.is(vifOfStatePath('/local/domain/3/device/vbd/0/state'), null);
  t.is(vifOfStatePath('/local/domain/0/backend/vif/3/1/state/x'), null);
});

test('writes outside a transaction are reported at once, with the state name; other keys are not', async (t) => {
  const { xs, seen } = client();
  t.true((await xs.write('/local/domain/3/device/vif/0/state', '4')).ok);
  t.true((await xs.write('/local/domain/3/device/vif/0/mac', '00:16:3e:00:00:03')).ok);
  t.true((await xs.write('/local/domain/0/backend/vif/3/0/state', 'junk')).ok);
  t.deepEqual(seen, ['vif3.0 Connected', 'vif3.0 "junk"']);
});

test('a transaction reports its state writes when it commits, and nothing when it aborts or is retried', async (t) => {
  const { xs, seen, raw } = client();
  const path = '/local/domain/3/device/vif/0/state';
  t.true((await xs.write(path, '1')).ok);
  seen.length = 0;
  // Aborted: nothing.
  const tx = await xs.transactionStart();
  if (!tx.ok) throw new Error(tx.error);
  await xs.write(path, '5', tx.value);
  t.deepEqual(seen, []);
  t.true((await xs.transactionEnd(tx.value, false)).ok);
  t.deepEqual(seen, []);
  // Retried on EAGAIN (someone else wrote the key meanwhile): reported once, for the attempt that committed.
  let attempts = 0;
  const r = await withTransaction(xs, async (id) => {
    attempts++;
    const w = await xs.write(path, '6', id);
    if (attempts === 1) await raw.write(path, '2');
    return w;
  });
  t.true(r.ok);
  t.is(attempts, 2);
  t.deepEqual(seen, ['vif3.0 Closed']);
});
