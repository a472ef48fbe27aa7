import test from 'ava';
import { testProp, fc } from '@fast-check/ava';
import { XenStore } from '../../shared/xenstore.js';
import { XenstoreClient } from '../../shared/xenstore-client.js';
import type { XsClient } from '../../shared/xenstore-protocol.js';
import { ok, type Result } from '../../shared/result.js';
import {
  VifKey,
  XenbusDevice,
  XenbusStateClosed,
  XenbusStateClosing,
  XenbusStateConnected,
  XenbusStateInitWait,
  XenbusStateInitialising,
  XenbusStateUnknown,
  backendStatePath,
  checkTransition,
  isLegalTransition,
  netbackFrontendChanged,
  netfrontBackendChanged,
  parseXenbusState,
  parseXenbusUnsigned,
  toolstackAddVif,
  toolstackCreateDomain,
  toolstackDestroyDomain,
  vifBackendPath,
  vifFrontendPath,
  writeXenbusKeys,
  xenbusStateName,
  type XenbusRole,
  type XenbusState,
} from '../../shared/xenbus.js';

// ---------------------------------------------------------------------------------------------------------
// The rules, stated independently of the implementation: one line per step the Linux driver takes.

const NAMES = ['Unknown', 'Initialising', 'InitWait', 'Initialised', 'Connected', 'Closing', 'Closed', 'Reconfiguring', 'Reconfigured'];

const RULES: Record<XenbusRole, string> = {
  // drivers/net/xen-netfront.c and drivers/xen/xenbus/xenbus_probe_frontend.c
  frontend: `
    Unknown -> Initialising        the device node appears (probe)
    Initialising -> Initialised    a generic frontend has published its rings
    Initialising -> Connected      netback_changed(InitWait): xennet_connect, then Connected
    Initialised -> Connected
    Initialising -> Closing        xennet_remove -> xennet_bus_close, from any live state
    Initialised -> Closing
    Connected -> Closing
    Initialising -> Closed         xenbus_frontend_closed: the backend closed under us
    Initialised -> Closed
    Connected -> Closed
    Closing -> Closed
    Closed -> Initialising         resume / reconnect
  `,
  // drivers/net/xen-netback/xenbus.c set_backend_state: each backend_switch_state call
  backend: `
    Unknown -> Initialising        the toolstack creates the device
    Initialising -> InitWait
    Initialising -> Closed
    InitWait -> Connected
    InitWait -> Closing
    Connected -> Closing
    Closing -> Closed
    Closed -> InitWait
    Closed -> Closing
  `,
};

function ruleSet(role: XenbusRole): Set<string> {
  const out = new Set<string>();
  for (const line of RULES[role].split('\n')) {
    const m = /^\s*(\w+) -> (\w+)/.exec(line);
    if (m === null) continue;
    out.add(`${NAMES.indexOf(m[1]!)}->${NAMES.indexOf(m[2]!)}`);
  }
  return out;
}

for (const role of ['frontend', 'backend'] as const) {
  test(`${role}: every one of the 81 transitions is accepted or refused as the rules say`, (t) => {
    const legal = ruleSet(role);
    t.false(legal.has('-1->-1'), 'rule names parse');
    let accepted = 0;
    for (let from = 0; from <= 8; from++) {
      for (let to = 0; to <= 8; to++) {
        const expected = legal.has(`${from}->${to}`);
        t.is(isLegalTransition(role, from, to), expected, `${NAMES[from]} -> ${NAMES[to]}`);
        const r = checkTransition(role, from, to);
        if (expected) {
          t.deepEqual(r, ok(undefined));
          accepted++;
        } else {
          t.deepEqual(r, {
            ok: false,
            error: `illegal XenbusState transition for a ${role}: ${NAMES[from]} -> ${NAMES[to]}`,
          });
        }
      }
    }
    t.is(accepted, legal.size);
  });
}

test('the exact refusal message of the brief', (t) => {
  t.deepEqual(checkTransition('frontend', XenbusStateConnected, XenbusStateInitWait), {
    ok: false,
    error: 'illegal XenbusState transition for a frontend: Connected -> InitWait',
  });
  t.false(isLegalTransition('backend', 9, 1));
  t.is(xenbusStateName(9), 'INVALID');
  t.is(xenbusStateName(-1), 'INVALID');
  t.is(xenbusStateName(1.5), 'INVALID');
});

// The shortest distance in the backend rule graph, by breadth-first search.
function distance(rules: Set<string>, from: number, to: number): number {
  const seen = new Map<number, number>([[from, 0]]);
  const queue = [from];
  while (queue.length > 0) {
    const s = queue.shift()!;
    for (let n = 0; n <= 8; n++) {
      if (rules.has(`${s}->${n}`) && !seen.has(n)) {
        seen.set(n, seen.get(s)! + 1);
        queue.push(n);
      }
    }
  }
  return seen.get(to) ?? Infinity;
}

test('set_backend_state paths are legal, end at the target and are shortest', (t) => {
  const rules = ruleSet('backend');
  const live = [XenbusStateInitialising, XenbusStateInitWait, XenbusStateConnected, XenbusStateClosing, XenbusStateClosed];
  const targets = [XenbusStateInitWait, XenbusStateConnected, XenbusStateClosing, XenbusStateClosed];
  for (const from of live) {
    for (const target of targets) {
      const p = backendStatePath(from, target);
      if (!p.ok) return t.fail(p.error);
      let s: number = from;
      for (const step of p.value) {
        t.true(rules.has(`${s}->${step}`), `${NAMES[s]} -> ${NAMES[step]}`);
        s = step;
      }
      t.is(s, target);
      t.is(p.value.length, distance(rules, from, target), `${NAMES[from]} to ${NAMES[target]}`);
    }
  }
  t.deepEqual(backendStatePath(XenbusStateConnected, XenbusStateInitWait), ok([5, 6, 2]));
  t.deepEqual(backendStatePath(XenbusStateConnected, XenbusStateInitialising), {
    ok: false,
    error: 'set_backend_state: no path from Connected to Initialising',
  });
  t.deepEqual(backendStatePath(XenbusStateUnknown, XenbusStateClosed), {
    ok: false,
    error: 'set_backend_state: no path from Unknown to Closed',
  });
});

test('netback and netfront reactions follow frontend_changed and netback_changed', (t) => {
  const nb = (s: number, online = true, vanished = false) => netbackFrontendChanged(s, online, vanished);
  t.deepEqual(nb(XenbusStateInitialising), { target: XenbusStateInitWait, unregister: false });
  t.deepEqual(nb(3), { target: null, unregister: false });
  t.deepEqual(nb(XenbusStateConnected), { target: XenbusStateConnected, unregister: false });
  t.deepEqual(nb(XenbusStateClosing), { target: XenbusStateClosing, unregister: false });
  t.deepEqual(nb(XenbusStateClosed), { target: XenbusStateClosed, unregister: false });
  t.deepEqual(nb(XenbusStateClosed, false), { target: XenbusStateClosed, unregister: true });
  t.deepEqual(nb(XenbusStateUnknown), { target: XenbusStateClosed, unregister: true });
  t.deepEqual(nb(XenbusStateConnected, true, true), { target: XenbusStateClosed, unregister: true });
  t.deepEqual(nb(7), { target: null, unregister: false });
  t.is(netfrontBackendChanged(XenbusStateInitialising, XenbusStateInitWait), XenbusStateConnected);
  t.is(netfrontBackendChanged(XenbusStateConnected, XenbusStateInitWait), null);
  t.is(netfrontBackendChanged(XenbusStateConnected, XenbusStateConnected), null);
  t.is(netfrontBackendChanged(XenbusStateConnected, XenbusStateClosing), XenbusStateClosed);
  t.is(netfrontBackendChanged(XenbusStateConnected, XenbusStateClosed), XenbusStateClosed);
  t.is(netfrontBackendChanged(XenbusStateClosed, XenbusStateClosed), null);
  t.is(netfrontBackendChanged(XenbusStateInitialising, XenbusStateUnknown), null);
});

const parseCases: [string, Result<unknown>][] = [
  ['4', ok(4)],
  ['0', ok(0)],
  ['8', ok(8)],
  ['9', { ok: false, error: 'state is corrupt: expected an integer 0 <= x <= 8 but got "9"' }],
  ['', { ok: false, error: 'state is corrupt: expected an integer 0 <= x <= 8 but got ""' }],
  [' 4', { ok: false, error: 'state is corrupt: expected an integer 0 <= x <= 8 but got " 4"' }],
  ['04', { ok: false, error: 'state is corrupt: expected an integer 0 <= x <= 8 but got "04"' }],
  ['-1', { ok: false, error: 'state is corrupt: expected an integer 0 <= x <= 8 but got "-1"' }],
  ['x'.repeat(50), { ok: false, error: `state is corrupt: expected an integer 0 <= x <= 8 but got "${'x'.repeat(40)}..."` }],
];
for (const [raw, expected] of parseCases) {
  test(`parseXenbusState(${JSON.stringify(raw.slice(0, 8))})`, (t) => t.deepEqual(parseXenbusState(raw), expected));
}

test('parseXenbusUnsigned takes plain decimals up to the maximum', (t) => {
  t.deepEqual(parseXenbusUnsigned('tx-ring-ref', '4294967295'), ok(4294967295));
  t.deepEqual(parseXenbusUnsigned('tx-ring-ref', '4294967296'), {
    ok: false,
    error: 'tx-ring-ref is corrupt: expected an integer 0 <= x <= 4294967295 but got "4294967296"',
  });
  t.deepEqual(parseXenbusUnsigned('event-channel', '+3', 4095), {
    ok: false,
    error: 'event-channel is corrupt: expected an integer 0 <= x <= 4095 but got "+3"',
  });
});

// ---------------------------------------------------------------------------------------------------------
// Devices on a real store

const FE = 5;
const MAC = '00:16:3e:00:00:05';

interface World {
  store: XenStore;
  dom0: XsClient;
  clients: Map<number, XsClient>;
  client(domid: number): XsClient;
}

async function world(backendDomid: number): Promise<World> {
  const store = new XenStore();
  const dom0 = XenstoreClient.local(must(store.connect(0)));
  for (const d of new Set([FE, backendDomid])) if (d !== 0) must(await toolstackCreateDomain(store, dom0, d));
  must(await toolstackAddVif(dom0, { frontendDomid: FE, backendDomid, devid: 0, mac: MAC }));
  const clients = new Map<number, XsClient>();
  return {
    store,
    dom0,
    clients,
    client(domid) {
      let c = clients.get(domid);
      if (c === undefined) {
        c = XenstoreClient.local(must(store.connect(domid)));
        clients.set(domid, c);
      }
      return c;
    },
  };
}

function must<T>(r: { ok: true; value: T } | { ok: false; error: string }): T {
  if (!r.ok) throw new Error(r.error);
  return r.value;
}

test('the toolstack creates both vif directories with crossed read permissions', async (t) => {
  const w = await world(1);
  const fe = vifFrontendPath(FE, 0);
  const be = vifBackendPath(1, FE, 0);
  t.is(fe, '/local/domain/5/device/vif/0');
  t.is(be, '/local/domain/1/backend/vif/5/0');
  t.deepEqual(must(await w.dom0.getPerms(fe)), [{ id: FE, perm: 'n' }, { id: 1, perm: 'r' }]);
  t.deepEqual(must(await w.dom0.getPerms(`${fe}/state`)), [{ id: FE, perm: 'n' }, { id: 1, perm: 'r' }]);
  t.deepEqual(must(await w.dom0.getPerms(be)), [{ id: 1, perm: 'n' }, { id: FE, perm: 'r' }]);
  t.is(must(await w.client(1).read(`${fe}/mac`)), MAC);
  t.is((await w.client(1).write(`${fe}/mac`, 'x')).ok, false, 'the backend may only read the frontend dir');
  t.is(must(await w.client(FE).read(`${be}/state`)), '1');
  t.is(must(await w.client(FE).read(`${fe}/backend`)), be);
  t.is(must(await w.client(FE).read(`${fe}/backend-id`)), '1');
  t.is(must(await w.client(1).read(`${be}/frontend-id`)), String(FE));
  t.is(must(await w.client(1).read(`${be}/hotplug-status`)), 'connected');
});

const openCases: { name: string; corrupt: (w: World) => Promise<unknown>; expect: string }[] = [
  {
    name: 'no backend key',
    corrupt: (w) => w.dom0.rm(`${vifFrontendPath(FE, 0)}/backend`),
    expect: 'cannot read /local/domain/5/device/vif/0/backend: ENOENT',
  },
  {
    name: 'a backend key that is no path',
    corrupt: (w) => w.dom0.write(`${vifFrontendPath(FE, 0)}/backend`, 'local/x/'),
    expect: 'backend is corrupt: expected an absolute xenstore path but got "local/x/"',
  },
  {
    name: 'a corrupt backend-id',
    corrupt: (w) => w.dom0.write(`${vifFrontendPath(FE, 0)}/backend-id`, '70000'),
    expect: 'backend-id is corrupt: expected an integer 0 <= x <= 32751 but got "70000"',
  },
  {
    name: 'a corrupt own state',
    corrupt: (w) => w.dom0.write(`${vifFrontendPath(FE, 0)}/state`, 'up'),
    expect: 'state is corrupt: expected an integer 0 <= x <= 8 but got "up"',
  },
  {
    name: 'no own state',
    corrupt: (w) => w.dom0.rm(`${vifFrontendPath(FE, 0)}/state`),
    expect: 'cannot read /local/domain/5/device/vif/0/state: ENOENT',
  },
  {
    name: 'a backend directory that is gone',
    corrupt: (w) => w.dom0.rm(vifBackendPath(1, FE, 0)),
    expect: 'cannot read /local/domain/1/backend/vif/5/0/state: EACCES',
  },
];
for (const c of openCases) {
  test(`opening a frontend with ${c.name} fails exactly`, async (t) => {
    const w = await world(1);
    await c.corrupt(w);
    t.deepEqual(await XenbusDevice.open(w.client(FE), 'frontend', vifFrontendPath(FE, 0)), { ok: false, error: c.expect });
  });
}

testProp(
  'a device accepts exactly the legal steps and its state key follows',
  [fc.constantFrom<XenbusRole>('frontend', 'backend'), fc.array(fc.integer({ min: 0, max: 8 }), { minLength: 1, maxLength: 25 })],
  async (t, role, attempts) => {
    const w = await world(1);
    const domid = role === 'frontend' ? FE : 1;
    const path = role === 'frontend' ? vifFrontendPath(FE, 0) : vifBackendPath(1, FE, 0);
    const dev = must(await XenbusDevice.open(w.client(domid), role, path));
    const rules = ruleSet(role);
    let model: number = XenbusStateInitialising;
    for (const to of attempts) {
      const r = await dev.switchState(to as XenbusState);
      const legal = to === model || rules.has(`${model}->${to}`);
      t.is(r.ok, legal, `${NAMES[model]} -> ${NAMES[to]}`);
      if (legal) model = to;
      t.is(dev.state as number, model);
      t.is(must(await w.dom0.read(`${path}/state`)), String(model));
    }
    await dev.close();
  },
  { numRuns: 40 },
);

// ---------------------------------------------------------------------------------------------------------
// Handshake and vanishing peers: minimal drivers built from the Linux reactions.

interface Ends {
  fe: XenbusDevice;
  be: XenbusDevice;
  backendSteps: string[];
  connectedKeys: Map<string, string>;
}

const FRONTEND_KEYS: [string, string][] = [
  [VifKey.txRingRef, '8'],
  [VifKey.rxRingRef, '9'],
  [VifKey.eventChannel, '3'],
  [VifKey.requestRxCopy, '1'],
  [VifKey.featureRxNotify, '1'],
  [VifKey.featureSg, '1'],
  [VifKey.featureGsoTcpv4, '1'],
];

// netfront: on backend InitWait, talk_to_netback (keys in one transaction), then Connected; close when it closes.
function runNetfront(dev: XenbusDevice): void {
  dev.onOtherendChanged(async (state) => {
    const target = netfrontBackendChanged(dev.state, state);
    if (target === null) return;
    if (target === XenbusStateConnected) must(await writeXenbusKeys(dev.client, dev.nodename, FRONTEND_KEYS));
    must(await dev.switchState(target));
  });
}

// netback: probe goes to InitWait; frontend_changed drives set_backend_state; connect reads the frontend's keys.
async function runNetback(dev: XenbusDevice, ends: Pick<Ends, 'backendSteps' | 'connectedKeys'>): Promise<void> {
  const hook = async (from: XenbusState, to: XenbusState): Promise<Result<void>> => {
    ends.backendSteps.push(`${NAMES[from]}->${NAMES[to]}`);
    if (to === XenbusStateConnected) {
      for (const [k] of FRONTEND_KEYS) {
        const r = await dev.client.read(`${dev.otherend}/${k}`);
        if (!r.ok) return { ok: false, error: `connect: ${k}: ${r.error}` };
        ends.connectedKeys.set(k, r.value);
      }
    }
    return ok(undefined);
  };
  dev.onOtherendChanged(async (state, vanished) => {
    const online = await dev.client.read(`${dev.nodename}/${VifKey.online}`);
    const reaction = netbackFrontendChanged(state, online.ok && online.value === '1', vanished);
    if (reaction.target !== null) must(await dev.setBackendState(reaction.target, hook));
  });
  must(await dev.setBackendState(XenbusStateInitWait, hook));
}

async function openEnds(w: World, backendDomid: number, startFrontend: boolean): Promise<Ends> {
  const fe = must(await XenbusDevice.open(w.client(FE), 'frontend', vifFrontendPath(FE, 0)));
  const be = must(await XenbusDevice.open(w.client(backendDomid), 'backend', vifBackendPath(backendDomid, FE, 0)));
  const ends: Ends = { fe, be, backendSteps: [], connectedKeys: new Map() };
  if (startFrontend) runNetfront(fe);
  await runNetback(be, ends);
  return ends;
}

for (const backendDomid of [0, 1]) {
  test(`handshake through the store reaches Connected on both ends (backend in dom${backendDomid})`, async (t) => {
    t.timeout(5000);
    const w = await world(backendDomid);
    const ends = await openEnds(w, backendDomid, true);
    await ends.fe.waitForOtherend((s) => s === XenbusStateConnected);
    await ends.be.waitForOtherend((s) => s === XenbusStateConnected);
    t.is(ends.fe.state, XenbusStateConnected);
    t.is(ends.be.state, XenbusStateConnected);
    t.deepEqual(ends.backendSteps, ['Initialising->InitWait', 'InitWait->Connected']);
    t.deepEqual([...ends.connectedKeys], FRONTEND_KEYS);
    t.is(must(await w.dom0.read(`${vifFrontendPath(FE, 0)}/state`)), '4');
    t.is(must(await w.dom0.read(`${vifBackendPath(backendDomid, FE, 0)}/state`)), '4');
    t.false(ends.fe.peerVanished);
    t.false(ends.be.peerVanished);
  });
}

// How the frontend domain disappears: a privileged backend hears @releaseDomain; an unprivileged one only sees
// the toolstack remove the frontend's nodes.
const vanishCases = [
  { backendDomid: 0, removeHome: false, how: 'released (dom0 backend hears @releaseDomain)' },
  { backendDomid: 1, removeHome: true, how: 'destroyed (driver-domain backend sees the nodes go)' },
];

for (const c of vanishCases) {
  test(`frontend ${c.how} mid-handshake: the backend closes from InitWait`, async (t) => {
    t.timeout(5000);
    const w = await world(c.backendDomid);
    const ends = await openEnds(w, c.backendDomid, false);
    t.is(ends.be.state, XenbusStateInitWait);
    must(await toolstackDestroyDomain(w.store, w.dom0, FE, c.removeHome));
    await ends.be.waitForState(XenbusStateClosed);
    t.true(ends.be.peerVanished);
    t.is(ends.be.otherendState, XenbusStateClosed);
    t.deepEqual(ends.backendSteps, ['Initialising->InitWait', 'InitWait->Closing', 'Closing->Closed']);
    t.is(must(await w.dom0.read(`${vifBackendPath(c.backendDomid, FE, 0)}/state`)), '6');
  });

  test(`frontend ${c.how} when connected: the backend disconnects and closes`, async (t) => {
    t.timeout(5000);
    const w = await world(c.backendDomid);
    const ends = await openEnds(w, c.backendDomid, true);
    await ends.fe.waitForOtherend((s) => s === XenbusStateConnected);
    must(await toolstackDestroyDomain(w.store, w.dom0, FE, c.removeHome));
    await ends.be.waitForState(XenbusStateClosed);
    t.true(ends.be.peerVanished);
    t.deepEqual(ends.backendSteps, ['Initialising->InitWait', 'InitWait->Connected', 'Connected->Closing', 'Closing->Closed']);
  });
}

test('backend domain destroyed when connected: the frontend sees the node go and closes', async (t) => {
  t.timeout(5000);
  const w = await world(1);
  const ends = await openEnds(w, 1, true);
  await ends.fe.waitForOtherend((s) => s === XenbusStateConnected);
  must(await toolstackDestroyDomain(w.store, w.dom0, 1));
  await ends.fe.waitForState(XenbusStateClosed);
  t.true(ends.fe.peerVanished);
  t.is(must(await w.dom0.read(`${vifFrontendPath(FE, 0)}/state`)), '6');
});

test('a frontend writing garbage into its state is seen as Unknown, and netback closes', async (t) => {
  t.timeout(5000);
  const w = await world(1);
  const ends = await openEnds(w, 1, false);
  must(await w.client(FE).write(`${vifFrontendPath(FE, 0)}/state`, 'garbage'));
  await ends.be.waitForState(XenbusStateClosed);
  t.is(ends.be.otherendState, XenbusStateUnknown);
  t.false(ends.be.peerVanished);
  t.is(ends.be.otherendError, 'state is corrupt: expected an integer 0 <= x <= 8 but got "garbage"');
});

test('switching state does not resurrect a removed device directory', async (t) => {
  const w = await world(1);
  const dev = must(await XenbusDevice.open(w.client(FE), 'frontend', vifFrontendPath(FE, 0)));
  must(await w.dom0.rm(vifFrontendPath(FE, 0)));
  t.deepEqual(await dev.switchState(XenbusStateClosing), ok(undefined));
  t.is(dev.state, XenbusStateClosing, 'as in Linux, the cached state moves on');
  t.is((await w.dom0.read(vifFrontendPath(FE, 0))).ok, false);
  await dev.close();
});

test('setBackendState is refused for a frontend, and a failing hook stops the walk', async (t) => {
  const w = await world(1);
  const fe = must(await XenbusDevice.open(w.client(FE), 'frontend', vifFrontendPath(FE, 0)));
  t.deepEqual(await fe.setBackendState(XenbusStateClosed), { ok: false, error: 'setBackendState is for a backend' });
  const be = must(await XenbusDevice.open(w.client(1), 'backend', vifBackendPath(1, FE, 0)));
  const r = await be.setBackendState(XenbusStateConnected, async (_from, to) =>
    to === XenbusStateConnected ? { ok: false, error: 'mapping failed' } : ok(undefined),
  );
  t.deepEqual(r, { ok: false, error: 'mapping failed' });
  t.is(be.state, XenbusStateInitWait);
  await fe.close();
  await be.close();
});
