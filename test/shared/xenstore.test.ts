import test, { type ExecutionContext } from 'ava';
import { testProp, fc } from '@fast-check/ava';
import {
  DEFAULT_XS_QUOTAS,
  XS_INTRODUCE_DOMAIN,
  XS_RELEASE_DOMAIN,
  XenStore,
  type XsConnection,
  type XsQuotas,
} from '../../shared/xenstore.js';
import type { XsErrno, XsResult } from '../../shared/xenstore-protocol.js';

const HOME5 = '/local/domain/5';
const HOME7 = '/local/domain/7';

interface Fixture {
  store: XenStore;
  d0: XsConnection;
  d5: XsConnection;
  d7: XsConnection;
  events: Map<XsConnection, [string, string][]>;
}

function must<T>(r: XsResult<T>): T {
  if (!r.ok) throw new Error(`expected success, got ${r.error}`);
  return r.value;
}

function errno(r: XsResult<unknown>): XsErrno | 'ok' {
  return r.ok ? 'ok' : r.error;
}

// Domains 5 and 7 with homes they own (private to everyone else), as a toolstack would set up.
function setup(quotas: Partial<XsQuotas> = {}): Fixture {
  const store = new XenStore(quotas);
  const d0 = must(store.connect(0));
  const events = new Map<XsConnection, [string, string][]>();
  const collect = (c: XsConnection): XsConnection => {
    const list: [string, string][] = [];
    events.set(c, list);
    c.setWatchSink((p, tok) => list.push([p, tok]));
    return c;
  };
  collect(d0);
  for (const id of [5, 7]) {
    must(store.introduceDomain(id));
    must(d0.mkdir(`/local/domain/${id}`));
    must(d0.setPerms(`/local/domain/${id}`, [{ id, perm: 'n' }]));
  }
  return { store, d0, d5: collect(must(store.connect(5))), d7: collect(must(store.connect(7))), events };
}

function take(f: Fixture, c: XsConnection): [string, string][] {
  const list = f.events.get(c)!;
  return list.splice(0, list.length);
}

// ---------------------------------------------------------------------------------------------------------
// Exact errors

const LONG_REL = 'x'.repeat(2049);
const errorCases: { name: string; run: (f: Fixture) => XsResult<unknown>; expect: XsErrno | 'ok' }[] = [
  { name: 'read of a missing node under a readable parent', run: (f) => f.d5.read(`${HOME5}/nope`), expect: 'ENOENT' },
  { name: 'read of a missing node under an unreadable parent', run: (f) => f.d5.read(`${HOME7}/nope`), expect: 'EACCES' },
  { name: 'read of a node without read permission', run: (f) => f.d5.read(HOME7), expect: 'EACCES' },
  { name: 'directory of a missing node', run: (f) => f.d5.directory(`${HOME5}/nope`), expect: 'ENOENT' },
  { name: 'empty path', run: (f) => f.d5.read(''), expect: 'EINVAL' },
  { name: 'double slash', run: (f) => f.d5.read(`${HOME5}//a`), expect: 'EINVAL' },
  { name: 'trailing slash', run: (f) => f.d5.read(`${HOME5}/`), expect: 'EINVAL' },
  { name: 'a space', run: (f) => f.d5.write(`${HOME5}/a b`, 'v'), expect: 'EINVAL' },
  { name: 'a dot', run: (f) => f.d5.write(`${HOME5}/a.b`, 'v'), expect: 'EINVAL' },
  { name: 'a special name where none is allowed', run: (f) => f.d0.read(XS_RELEASE_DOMAIN), expect: 'EINVAL' },
  { name: 'a path that is not a string', run: (f) => f.d5.read(42 as unknown as string), expect: 'EINVAL' },
  { name: 'a value that is not a string', run: (f) => f.d5.write(`${HOME5}/a`, 7 as unknown as string), expect: 'EINVAL' },
  { name: 'relative path of 2048 chars for a domU', run: (f) => f.d5.write(LONG_REL.slice(1), ''), expect: 'ok' },
  { name: 'relative path of 2049 chars for a domU', run: (f) => f.d5.write(LONG_REL, ''), expect: 'EINVAL' },
  { name: 'same length under /local/domain/5 absolute', run: (f) => f.d5.write(`${HOME5}/${LONG_REL}`, ''), expect: 'EINVAL' },
  { name: 'dom0 is not held to the relative limit', run: (f) => f.d0.write(`${HOME5}/${LONG_REL}`, ''), expect: 'ok' },
  { name: 'absolute path over 3072 chars', run: (f) => f.d0.write(`/${'y'.repeat(3072)}`, ''), expect: 'EINVAL' },
  { name: 'payload of exactly 4096 bytes', run: (f) => f.d0.write('/p', 'v'.repeat(4096 - 3)), expect: 'ok' },
  { name: 'payload of 4097 bytes', run: (f) => f.d0.write('/p', 'v'.repeat(4096 - 2)), expect: 'E2BIG' },
  { name: 'domU value of 2048 bytes', run: (f) => f.d5.write(`${HOME5}/v`, 'v'.repeat(2048)), expect: 'ok' },
  { name: 'domU value of 2049 bytes', run: (f) => f.d5.write(`${HOME5}/v`, 'v'.repeat(2049)), expect: 'ENOSPC' },
  { name: 'domU value of 2049 bytes counted in UTF-8', run: (f) => f.d5.write(`${HOME5}/v`, `${'v'.repeat(2047)}é`), expect: 'ENOSPC' },
  { name: 'dom0 value of 3000 bytes', run: (f) => f.d0.write(`${HOME5}/v`, 'v'.repeat(3000)), expect: 'ok' },
  { name: 'rm of the root', run: (f) => f.d0.rm('/'), expect: 'EINVAL' },
  { name: 'rm of a missing node whose parent exists', run: (f) => f.d5.rm(`${HOME5}/nope`), expect: 'ok' },
  { name: 'rm of a missing node whose parent is missing', run: (f) => f.d5.rm(`${HOME5}/nope/deeper`), expect: 'ENOENT' },
  { name: 'rm of a node without write permission', run: (f) => f.d5.rm(HOME7), expect: 'EACCES' },
  { name: 'write without write permission', run: (f) => f.d5.write(`${HOME7}/x`, 'v'), expect: 'EACCES' },
  { name: 'mkdir of an existing node', run: (f) => f.d5.mkdir(HOME5), expect: 'ok' },
  { name: 'an unknown transaction id', run: (f) => f.d5.read(HOME5, 99), expect: 'ENOENT' },
  { name: 'a transaction id that is not an integer', run: (f) => f.d5.read(HOME5, 1.5), expect: 'EINVAL' },
  { name: 'ending an unknown transaction', run: (f) => f.d5.transactionEnd(3, true), expect: 'ENOENT' },
  { name: 'ending XBT_NULL', run: (f) => f.d5.transactionEnd(0, false), expect: 'ENOENT' },
  { name: 'unwatch of an unknown watch', run: (f) => f.d5.unwatch(HOME5, 'tok'), expect: 'ENOENT' },
  {
    name: 'the same watch twice',
    run: (f) => (f.d5.watch(HOME5, 'tok'), f.d5.watch(HOME5, 'tok')),
    expect: 'EEXIST',
  },
  { name: 'set_perms by a domain that does not own the node', run: (f) => f.d5.setPerms(HOME7, [{ id: 7, perm: 'r' }]), expect: 'EACCES' },
  { name: 'set_perms giving the node away', run: (f) => f.d5.setPerms(HOME5, [{ id: 7, perm: 'n' }]), expect: 'EPERM' },
  { name: 'set_perms with no entry', run: (f) => f.d5.setPerms(HOME5, []), expect: 'EINVAL' },
  { name: 'set_perms with an unknown letter', run: (f) => f.d5.setPerms(HOME5, [{ id: 5, perm: 'x' as 'n' }]), expect: 'EINVAL' },
  { name: 'set_perms with a reserved domid', run: (f) => f.d0.setPerms(HOME5, [{ id: 0x7ff0, perm: 'n' }]), expect: 'EINVAL' },
  { name: 'set_perms that is not an array', run: (f) => f.d0.setPerms(HOME5, 'n5' as unknown as []), expect: 'EINVAL' },
  { name: 'get_perms of an unreadable node', run: (f) => f.d5.getPerms(HOME7), expect: 'EACCES' },
  { name: 'get_perms of an unknown special node', run: (f) => f.d0.getPerms('@nope'), expect: 'ENOENT' },
  { name: 'is_domain_introduced from a domU', run: (f) => f.d5.isDomainIntroduced(7), expect: 'EACCES' },
  { name: 'get_domain_path of a bad domid', run: (f) => f.d5.getDomainPath(-1), expect: 'EINVAL' },
  { name: 'connect to an unknown domain', run: (f) => f.store.connect(99), expect: 'ENOENT' },
  { name: 'introduce a known domain', run: (f) => f.store.introduceDomain(5), expect: 'EEXIST' },
  { name: 'release dom0', run: (f) => f.store.releaseDomain(0), expect: 'EINVAL' },
  { name: 'release an unknown domain', run: (f) => f.store.releaseDomain(99), expect: 'ENOENT' },
];

for (const c of errorCases) {
  test(`error: ${c.name} -> ${c.expect}`, (t) => {
    t.is(errno(c.run(setup())), c.expect);
  });
}

test('a failed write changes nothing', (t) => {
  const f = setup();
  const before = f.store.nodeCount();
  t.is(errno(f.d5.write(`${HOME5}/a/b/${'z'.repeat(2049)}`, 'v')), 'EINVAL');
  t.is(errno(f.d5.write(`${HOME5}/a/b`, 'v'.repeat(2049))), 'ENOSPC');
  t.is(f.store.nodeCount(), before);
  t.is(errno(f.d5.read(`${HOME5}/a`)), 'ENOENT');
});

test('a released domain\'s connection answers EIO', (t) => {
  const f = setup();
  must(f.store.releaseDomain(5));
  t.true(f.d5.closed);
  t.is(errno(f.d5.read(HOME5)), 'EIO');
  t.is(errno(f.d5.transactionStart()), 'EIO');
});

// ---------------------------------------------------------------------------------------------------------
// Basic operations

test('write creates missing ancestors with empty values and read gives values back', (t) => {
  const f = setup();
  must(f.d5.write(`${HOME5}/a/b/c`, 'hello'));
  t.is(must(f.d5.read(`${HOME5}/a/b/c`)), 'hello');
  t.is(must(f.d5.read(`${HOME5}/a/b`)), '');
  t.deepEqual(must(f.d5.directory(`${HOME5}/a`)), ['b']);
  must(f.d5.write(`${HOME5}/a/z`, ''));
  must(f.d5.write(`${HOME5}/a/m`, ''));
  t.deepEqual(must(f.d5.directory(`${HOME5}/a`)), ['b', 'z', 'm'], 'children in creation order');
});

test('relative paths resolve under the domain home', (t) => {
  const f = setup();
  must(f.d5.write('device/vif/0/state', '1'));
  t.is(must(f.d0.read(`${HOME5}/device/vif/0/state`)), '1');
  t.is(must(f.d5.getDomainPath(5)), HOME5);
});

test('rm removes the whole subtree and the parent forgets the child', (t) => {
  const f = setup();
  must(f.d5.write(`${HOME5}/a/b/c`, '1'));
  must(f.d5.write(`${HOME5}/a/d`, '2'));
  const before = f.store.nodeCount();
  must(f.d5.rm(`${HOME5}/a/b`));
  t.is(f.store.nodeCount(), before - 2);
  t.deepEqual(must(f.d5.directory(`${HOME5}/a`)), ['d']);
  t.is(errno(f.d5.read(`${HOME5}/a/b/c`)), 'ENOENT');
});

// ---------------------------------------------------------------------------------------------------------
// Permissions

test('perms: the owner and dom0 have full access, others get the default letter', (t) => {
  const f = setup();
  must(f.d5.write(`${HOME5}/pub`, 'v'));
  must(f.d5.setPerms(`${HOME5}/pub`, [{ id: 5, perm: 'r' }]));
  t.is(must(f.d7.read(`${HOME5}/pub`)), 'v');
  t.is(errno(f.d7.write(`${HOME5}/pub`, 'x')), 'EACCES');
  must(f.d5.write(`${HOME5}/pub`, 'owner'));
  must(f.d0.write(`${HOME5}/pub`, 'dom0'));
  must(f.d5.setPerms(`${HOME5}/pub`, [{ id: 5, perm: 'n' }]));
  t.is(errno(f.d7.read(`${HOME5}/pub`)), 'EACCES');
  t.is(must(f.d5.read(`${HOME5}/pub`)), 'dom0');
  t.is(must(f.d0.read(`${HOME5}/pub`)), 'dom0');
});

test('perms: an ACL entry overrides the default for its domain only', (t) => {
  const f = setup();
  must(f.store.introduceDomain(9));
  const d9 = must(f.store.connect(9));
  must(f.d5.write(`${HOME5}/box`, 'v'));
  must(f.d5.setPerms(`${HOME5}/box`, [{ id: 5, perm: 'r' }, { id: 7, perm: 'w' }]));
  t.is(errno(f.d7.read(`${HOME5}/box`)), 'EACCES', 'w does not include r');
  must(f.d7.write(`${HOME5}/box`, 'from7'));
  t.is(must(d9.read(`${HOME5}/box`)), 'from7', 'others keep the default r');
  t.is(errno(d9.write(`${HOME5}/box`, 'x')), 'EACCES');
  t.is(errno(f.d7.setPerms(`${HOME5}/box`, [{ id: 5, perm: 'b' }])), 'EACCES', 'write is not ownership');
});

test('perms: children inherit the parent\'s list; an unprivileged creator becomes the owner', (t) => {
  const f = setup();
  must(f.d0.mkdir(`${HOME5}/dev`));
  must(f.d0.setPerms(`${HOME5}/dev`, [{ id: 5, perm: 'n' }, { id: 7, perm: 'b' }]));
  must(f.d0.write(`${HOME5}/dev/by0`, ''));
  t.deepEqual(must(f.d0.getPerms(`${HOME5}/dev/by0`)), [{ id: 5, perm: 'n' }, { id: 7, perm: 'b' }]);
  must(f.d7.write(`${HOME5}/dev/by7/deep`, ''));
  t.deepEqual(must(f.d0.getPerms(`${HOME5}/dev/by7`)), [{ id: 7, perm: 'n' }, { id: 7, perm: 'b' }]);
  t.deepEqual(must(f.d0.getPerms(`${HOME5}/dev/by7/deep`)), [{ id: 7, perm: 'n' }, { id: 7, perm: 'b' }]);
  t.is(f.store.ownedNodes(7), 3, 'its home and the two it created');
  t.is(errno(f.d5.read(`${HOME5}/dev/by7`)), 'EACCES', 'the home owner lost access to what 7 created');
});

test('perms: dom0 may give a node away, and owner counts follow', (t) => {
  const f = setup();
  must(f.d5.write(`${HOME5}/gift`, ''));
  const owned5 = f.store.ownedNodes(5);
  must(f.d0.setPerms(`${HOME5}/gift`, [{ id: 7, perm: 'n' }]));
  t.is(f.store.ownedNodes(5), owned5 - 1);
  must(f.d7.write(`${HOME5}/gift`, 'mine'));
  t.is(errno(f.d5.read(`${HOME5}/gift`)), 'EACCES');
});

test('perms: a missing node under an unreadable ancestor looks like EACCES, not ENOENT', (t) => {
  const f = setup();
  t.is(errno(f.d5.read(`${HOME7}/a/b/c`)), 'EACCES');
  t.is(errno(f.d7.read(`${HOME7}/a/b/c`)), 'ENOENT');
  t.is(errno(f.d5.mkdir(`${HOME7}/a`)), 'EACCES');
});

// ---------------------------------------------------------------------------------------------------------
// Quotas (the defaults are QEMU's and xenstored's)

test('quota: a domain owns at most 1000 nodes; creation is all or nothing; dom0 is exempt', (t) => {
  t.is(DEFAULT_XS_QUOTAS.nodesPerDomain, 1000);
  const f = setup();
  let made = 0;
  for (;;) {
    const r = f.d5.write(`${HOME5}/n${made}`, '');
    if (!r.ok) {
      t.is(r.error, 'ENOSPC');
      break;
    }
    made++;
  }
  t.is(f.store.ownedNodes(5), 1000);
  must(f.d5.rm(`${HOME5}/n0`));
  t.is(errno(f.d5.write(`${HOME5}/two/levels`, '')), 'ENOSPC', 'needs two nodes, one is free');
  t.is(errno(f.d5.read(`${HOME5}/two`)), 'ENOENT', 'nothing half-created');
  must(f.d5.write(`${HOME5}/one`, ''));
  must(f.d0.write(`${HOME5}/by-dom0`, ''));
  t.is(f.store.ownedNodes(5), 1001, 'dom0 can still create nodes the domain owns');
});

test('quota: a domain holds at most 128 watches; dom0 is exempt', (t) => {
  t.is(DEFAULT_XS_QUOTAS.watchesPerDomain, 128);
  const f = setup();
  for (let i = 0; i < 128; i++) must(f.d5.watch(HOME5, `t${i}`));
  t.is(errno(f.d5.watch(HOME5, 'one-more')), 'E2BIG');
  must(f.d5.unwatch(HOME5, 't0'));
  must(f.d5.watch(HOME5, 'one-more'));
  t.is(errno(must(f.store.connect(5)).watch(HOME5, 'other-conn')), 'E2BIG', 'the quota is per domain');
  for (let i = 0; i < 200; i++) must(f.d0.watch(HOME5, `t${i}`));
});

test('quota: a domain holds at most 10 open transactions; dom0 is exempt', (t) => {
  t.is(DEFAULT_XS_QUOTAS.transactionsPerDomain, 10);
  const f = setup();
  const ids = Array.from({ length: 10 }, () => must(f.d5.transactionStart()));
  t.is(new Set(ids).size, 10);
  t.false(ids.includes(0), 'never XBT_NULL');
  t.is(errno(f.d5.transactionStart()), 'ENOSPC');
  must(f.d5.transactionEnd(ids[3]!, false));
  must(f.d5.transactionStart());
  for (let i = 0; i < 20; i++) must(f.d0.transactionStart());
});

test('quota: a permission list holds at most 5 entries for a domU; dom0 is exempt', (t) => {
  t.is(DEFAULT_XS_QUOTAS.permsPerNode, 5);
  const f = setup();
  const perms = (n: number) => Array.from({ length: n }, (_, i) => ({ id: i === 0 ? 5 : 100 + i, perm: 'r' as const }));
  must(f.d5.setPerms(HOME5, perms(5)));
  t.is(errno(f.d5.setPerms(HOME5, perms(6))), 'ENOSPC');
  must(f.d0.setPerms(HOME5, perms(6)));
});

test('quota: a node value holds at most 2048 bytes for a domU', (t) => {
  t.is(DEFAULT_XS_QUOTAS.nodeSize, 2048);
  const f = setup({ nodeSize: 10 });
  must(f.d5.write(`${HOME5}/a`, '0123456789'));
  t.is(errno(f.d5.write(`${HOME5}/a`, '0123456789A')), 'ENOSPC');
  t.is(must(f.d5.read(`${HOME5}/a`)), '0123456789');
});

test('quota: nodes created in a transaction count, and are checked again at commit', (t) => {
  const f = setup({ nodesPerDomain: 6 });
  t.is(f.store.ownedNodes(5), 1, 'the home');
  const tx = must(f.d5.transactionStart());
  must(f.d5.write(`${HOME5}/a/b/c`, '', tx));
  t.is(errno(f.d5.write(`${HOME5}/x/y/z`, '', tx)), 'ENOSPC', '1 + 3 + 3 > 6');
  must(f.d5.write(`${HOME5}/x`, '', tx));
  must(f.d5.transactionEnd(tx, false));
  const tx2 = must(f.d5.transactionStart());
  must(f.d5.write(`${HOME5}/a/b`, '', tx2));
  must(f.d5.write(`${HOME5}/c`, '', tx2));
  // Meanwhile dom0 gives domain 5 three nodes elsewhere, touching nothing the transaction touched.
  for (const p of [`${HOME7}/q1`, `${HOME7}/q2`, `${HOME7}/q3`]) {
    must(f.d0.write(p, ''));
    must(f.d0.setPerms(p, [{ id: 5, perm: 'n' }]));
  }
  t.is(errno(f.d5.transactionEnd(tx2, true)), 'ENOSPC', '4 + 3 > 6 at commit');
  t.is(f.store.ownedNodes(5), 4);
  t.is(errno(f.d5.read(`${HOME5}/a`)), 'ENOENT');
});

// ---------------------------------------------------------------------------------------------------------
// Transactions

test('transaction: reads inside see the transaction\'s own writes; others see them only after commit', (t) => {
  const f = setup();
  must(f.d5.write(`${HOME5}/k`, 'old'));
  const tx = must(f.d5.transactionStart());
  must(f.d5.write(`${HOME5}/k`, 'new', tx));
  must(f.d5.write(`${HOME5}/fresh/leaf`, 'v', tx));
  t.is(must(f.d5.read(`${HOME5}/k`, tx)), 'new');
  t.deepEqual(must(f.d5.directory(HOME5, tx)), ['k', 'fresh']);
  t.is(must(f.d5.read(`${HOME5}/k`)), 'old');
  t.is(errno(f.d0.read(`${HOME5}/fresh`)), 'ENOENT');
  must(f.d5.transactionEnd(tx, true));
  t.is(must(f.d0.read(`${HOME5}/k`)), 'new');
  t.is(must(f.d0.read(`${HOME5}/fresh/leaf`)), 'v');
  t.is(errno(f.d5.read(`${HOME5}/k`, tx)), 'ENOENT', 'the id is gone after the end');
});

test('transaction: abort discards every change', (t) => {
  const f = setup();
  must(f.d5.write(`${HOME5}/k`, 'old'));
  const nodes = f.store.nodeCount();
  const tx = must(f.d5.transactionStart());
  must(f.d5.write(`${HOME5}/k`, 'new', tx));
  must(f.d5.rm(`${HOME5}/k`, tx));
  must(f.d5.write(`${HOME5}/a/b`, 'v', tx));
  must(f.d5.transactionEnd(tx, false));
  t.is(must(f.d5.read(`${HOME5}/k`)), 'old');
  t.is(f.store.nodeCount(), nodes);
  t.deepEqual(f.store.domainUsage(5), { watches: 0, transactions: 0 });
});

test('transaction: a node read inside and changed outside gives EAGAIN, and nothing lands', (t) => {
  const f = setup();
  must(f.d5.write(`${HOME5}/k`, 'old'));
  const tx = must(f.d5.transactionStart());
  t.is(must(f.d5.read(`${HOME5}/k`, tx)), 'old');
  must(f.d5.write(`${HOME5}/other`, 'x', tx));
  must(f.d0.write(`${HOME5}/k`, 'dom0'));
  t.is(must(f.d5.read(`${HOME5}/k`, tx)), 'old', 'the transaction keeps its snapshot');
  t.is(errno(f.d5.transactionEnd(tx, true)), 'EAGAIN');
  t.is(errno(f.d0.read(`${HOME5}/other`)), 'ENOENT');
  t.is(must(f.d0.read(`${HOME5}/k`)), 'dom0');
});

test('transaction: a directory listed inside that gains a child outside gives EAGAIN', (t) => {
  const f = setup();
  must(f.d5.mkdir(`${HOME5}/dir`));
  const tx = must(f.d5.transactionStart());
  t.deepEqual(must(f.d5.directory(`${HOME5}/dir`, tx)), []);
  must(f.d5.write(`${HOME5}/note`, 'x', tx));
  must(f.d5.write(`${HOME5}/dir/child`, 'y'));
  t.is(errno(f.d5.transactionEnd(tx, true)), 'EAGAIN');
});

test('transaction: a node that did not exist when read and was created outside gives EAGAIN', (t) => {
  const f = setup();
  const tx = must(f.d5.transactionStart());
  t.is(errno(f.d5.read(`${HOME5}/later`, tx)), 'ENOENT');
  must(f.d0.write(`${HOME5}/later`, 'x'));
  t.is(errno(f.d5.transactionEnd(tx, true)), 'EAGAIN');
});

test('transaction: disjoint changes commit', (t) => {
  const f = setup();
  must(f.d5.write(`${HOME5}/a`, '1'));
  must(f.d5.write(`${HOME5}/b`, '1'));
  const tx = must(f.d5.transactionStart());
  must(f.d5.write(`${HOME5}/a`, '2', tx));
  must(f.d0.write(`${HOME5}/b`, '3'));
  must(f.d5.transactionEnd(tx, true));
  t.is(must(f.d0.read(`${HOME5}/a`)), '2');
  t.is(must(f.d0.read(`${HOME5}/b`)), '3');
});

test('transaction: two transactions writing the same node: the first commit wins', (t) => {
  const f = setup();
  must(f.d5.write(`${HOME5}/a`, '0'));
  const t1 = must(f.d5.transactionStart());
  const t2 = must(f.d5.transactionStart());
  must(f.d5.write(`${HOME5}/a`, '1', t1));
  must(f.d5.write(`${HOME5}/a`, '2', t2));
  must(f.d5.transactionEnd(t1, true));
  t.is(errno(f.d5.transactionEnd(t2, true)), 'EAGAIN');
  t.is(must(f.d5.read(`${HOME5}/a`)), '1');
});

test('transaction: watches fire at commit, not before, and not at all on abort', (t) => {
  const f = setup();
  must(f.d5.write(`${HOME5}/old`, '0'));
  must(f.d0.watch(HOME5, 'home'));
  take(f, f.d0);
  const tx = must(f.d5.transactionStart());
  must(f.d5.write(`${HOME5}/a`, '1', tx));
  must(f.d5.rm(`${HOME5}/a`, tx));
  must(f.d5.write(`${HOME5}/b`, '1', tx));
  must(f.d5.write(`${HOME5}/old`, '1', tx));
  t.deepEqual(take(f, f.d0), []);
  must(f.d5.transactionEnd(tx, true));
  // Like xenstored, a node created and removed inside the transaction is not there to be seen: no event.
  t.deepEqual(take(f, f.d0), [
    [`${HOME5}/b`, 'home'],
    [`${HOME5}/old`, 'home'],
  ]);
  const tx2 = must(f.d5.transactionStart());
  must(f.d5.write(`${HOME5}/c`, '1', tx2));
  must(f.d5.transactionEnd(tx2, false));
  t.deepEqual(take(f, f.d0), []);
  const tx3 = must(f.d5.transactionStart());
  must(f.d5.write(`${HOME5}/b`, '2', tx3));
  must(f.d0.write(`${HOME5}/b`, 'x'));
  take(f, f.d0);
  t.is(errno(f.d5.transactionEnd(tx3, true)), 'EAGAIN');
  t.deepEqual(take(f, f.d0), [], 'a failed commit fires nothing');
});

// An independent statement of xenstored's rule (transaction.c): a commit fails when a node the transaction
// touched was changed by someone else after the transaction first touched it. Reads see the snapshot taken at
// that first touch, or the transaction's own writes.
type Step = { kind: 'txRead' | 'txWrite' | 'other'; node: number };
testProp(
  'transaction: EAGAIN exactly when a node was changed outside after the transaction first touched it',
  [
    fc.array(
      fc.record({ kind: fc.constantFrom<Step['kind']>('txRead', 'txWrite', 'other'), node: fc.integer({ min: 0, max: 3 }) }),
      { maxLength: 12 },
    ),
  ],
  (t, steps) => {
    const f = setup();
    const path = (n: number) => `${HOME5}/n${n}`;
    const global = new Map<number, string>();
    for (let n = 0; n < 4; n++) {
      must(f.d5.write(path(n), 'init'));
      global.set(n, 'init');
    }
    const tx = must(f.d5.transactionStart());
    const view = new Map<number, string>();
    const txWrites = new Map<number, string>();
    let conflict = false;
    steps.forEach((s, i) => {
      if (s.kind === 'other') {
        const v = `other${i}`;
        must(f.d0.write(path(s.node), v));
        global.set(s.node, v);
        if (view.has(s.node)) conflict = true;
        return;
      }
      if (!view.has(s.node)) view.set(s.node, global.get(s.node)!);
      if (s.kind === 'txRead') {
        t.is(must(f.d5.read(path(s.node), tx)), view.get(s.node)!);
      } else {
        const v = `tx${i}`;
        must(f.d5.write(path(s.node), v, tx));
        view.set(s.node, v);
        txWrites.set(s.node, v);
      }
    });
    t.is(errno(f.d5.transactionEnd(tx, true)), conflict ? 'EAGAIN' : 'ok');
    if (!conflict) for (const [n, v] of txWrites) global.set(n, v);
    for (let n = 0; n < 4; n++) t.is(must(f.d0.read(path(n))), global.get(n)!);
  },
);

// ---------------------------------------------------------------------------------------------------------
// Watches

test('watch: fires once at registration with the path and token as given', (t) => {
  const f = setup();
  must(f.d5.watch(`${HOME5}/not/there/yet`, 'a'));
  must(f.d5.watch('device', 'rel'));
  t.deepEqual(take(f, f.d5), [
    [`${HOME5}/not/there/yet`, 'a'],
    ['device', 'rel'],
  ]);
});

test('watch: fires for the node and any descendant, not for siblings or ancestors', (t) => {
  const f = setup();
  must(f.d5.watch(`${HOME5}/dev`, 'dev'));
  take(f, f.d5);
  must(f.d5.write(`${HOME5}/dev`, 'x'));
  must(f.d5.write(`${HOME5}/dev/vif/0/state`, '1'));
  must(f.d5.write(`${HOME5}/devx`, 'sibling with a common prefix'));
  must(f.d5.write(HOME5, 'ancestor'));
  must(f.d5.mkdir(`${HOME5}/dev/new`));
  must(f.d5.mkdir(`${HOME5}/dev/new`));
  must(f.d5.setPerms(`${HOME5}/dev`, [{ id: 5, perm: 'r' }]));
  t.deepEqual(take(f, f.d5), [
    [`${HOME5}/dev`, 'dev'],
    [`${HOME5}/dev/vif/0/state`, 'dev'],
    [`${HOME5}/dev/new`, 'dev'],
    [`${HOME5}/dev`, 'dev'],
  ]);
});

test('watch: rm fires for the removed node on ancestors\' watches and for each removed descendant on exact watches', (t) => {
  const f = setup();
  must(f.d5.write(`${HOME5}/a/b/c`, '1'));
  must(f.d5.watch(HOME5, 'home'));
  must(f.d5.watch(`${HOME5}/a/b/c`, 'leaf'));
  must(f.d5.watch(`${HOME5}/a/b/c/below`, 'below'));
  take(f, f.d5);
  must(f.d5.rm(`${HOME5}/a`));
  t.deepEqual(take(f, f.d5), [
    [`${HOME5}/a/b/c`, 'leaf'],
    [`${HOME5}/a`, 'home'],
  ]);
});

test('watch: unwatch stops events, and relative watches get relative paths', (t) => {
  const f = setup();
  must(f.d5.watch('dev', 'rel'));
  take(f, f.d5);
  must(f.d5.write(`${HOME5}/dev/x`, '1'));
  t.deepEqual(take(f, f.d5), [['dev/x', 'rel']]);
  must(f.d5.unwatch('dev', 'rel'));
  must(f.d5.write(`${HOME5}/dev/x`, '2'));
  t.deepEqual(take(f, f.d5), []);
});

test('watch: a watcher hears only of nodes it (or the parent) may read, and of losing access', (t) => {
  const f = setup();
  must(f.d5.write(`${HOME5}/secret`, '1'));
  must(f.d7.watch(`${HOME5}/secret`, 'peek'));
  take(f, f.d7);
  must(f.d5.write(`${HOME5}/secret`, '2'));
  t.deepEqual(take(f, f.d7), []);
  must(f.d5.setPerms(`${HOME5}/secret`, [{ id: 5, perm: 'n' }, { id: 7, perm: 'r' }]));
  must(f.d5.write(`${HOME5}/secret`, '3'));
  t.deepEqual(take(f, f.d7), [[`${HOME5}/secret`, 'peek'], [`${HOME5}/secret`, 'peek']]);
  must(f.d5.setPerms(`${HOME5}/secret`, [{ id: 5, perm: 'n' }]));
  t.deepEqual(take(f, f.d7), [[`${HOME5}/secret`, 'peek']], 'the old perms let it hear of the change');
  must(f.d5.write(`${HOME5}/secret`, '4'));
  t.deepEqual(take(f, f.d7), []);
});

test('watch: @introduceDomain and @releaseDomain reach dom0, and a domU only once allowed to read them', (t) => {
  const f = setup();
  must(f.d0.watch(XS_INTRODUCE_DOMAIN, 'intro'));
  must(f.d0.watch(XS_RELEASE_DOMAIN, 'rel'));
  must(f.d7.watch(XS_RELEASE_DOMAIN, 'rel7'));
  take(f, f.d0);
  t.deepEqual(take(f, f.d7), [[XS_RELEASE_DOMAIN, 'rel7']], 'the immediate event is unconditional');
  must(f.store.introduceDomain(9));
  must(f.store.releaseDomain(9));
  t.deepEqual(take(f, f.d0), [[XS_INTRODUCE_DOMAIN, 'intro'], [XS_RELEASE_DOMAIN, 'rel']]);
  t.deepEqual(take(f, f.d7), []);
  t.is(errno(f.d7.setPerms(XS_RELEASE_DOMAIN, [{ id: 7, perm: 'r' }])), 'EACCES');
  must(f.d0.setPerms(XS_RELEASE_DOMAIN, [{ id: 0, perm: 'n' }, { id: 7, perm: 'r' }]));
  must(f.store.releaseDomain(5));
  t.deepEqual(take(f, f.d7), [[XS_RELEASE_DOMAIN, 'rel7']]);
  t.false(must(f.d0.isDomainIntroduced(5)));
  t.true(must(f.d0.isDomainIntroduced(7)));
});

test('domain release drops its watches and transactions and hands its nodes to dom0', (t) => {
  const f = setup();
  must(f.d5.write(`${HOME5}/a`, '1'));
  must(f.d5.watch(HOME5, 'w'));
  must(f.d5.transactionStart());
  must(f.d0.write(`${HOME7}/acl`, ''));
  must(f.d0.setPerms(`${HOME7}/acl`, [{ id: 7, perm: 'n' }, { id: 5, perm: 'r' }]));
  must(f.store.releaseDomain(5));
  t.is(f.store.domainUsage(5), undefined);
  t.is(f.store.ownedNodes(5), 0);
  t.deepEqual(must(f.d0.getPerms(`${HOME5}/a`)), [{ id: 0, perm: 'n' }]);
  t.deepEqual(must(f.d0.getPerms(`${HOME7}/acl`)), [{ id: 7, perm: 'n' }]);
  must(f.d0.write(`${HOME5}/a`, '2'));
  t.deepEqual(take(f, f.d5), [[HOME5, 'w']], 'only the immediate event: the watch died with the domain');
});

test('resetWatches drops the connection\'s watches and transactions', (t) => {
  const f = setup();
  must(f.d5.watch(HOME5, 'a'));
  must(f.d5.watch(HOME5, 'b'));
  must(f.d5.transactionStart());
  must(f.d5.resetWatches());
  t.deepEqual(f.store.domainUsage(5), { watches: 0, transactions: 0 });
});

// ---------------------------------------------------------------------------------------------------------
// Random operation sequences against a Map model

type Op =
  | { op: 'write'; path: string; value: string }
  | { op: 'mkdir'; path: string }
  | { op: 'rm'; path: string }
  | { op: 'read'; path: string }
  | { op: 'directory'; path: string };

const segment = fc.constantFrom('a', 'b', 'c');
const modelPath = fc.array(segment, { minLength: 1, maxLength: 3 }).map((s) => `${HOME5}/${s.join('/')}`);
const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ op: fc.constant('write' as const), path: modelPath, value: fc.string({ maxLength: 4 }) }),
  fc.record({ op: fc.constant('mkdir' as const), path: modelPath }),
  fc.record({ op: fc.constant('rm' as const), path: modelPath }),
  fc.record({ op: fc.constant('read' as const), path: modelPath }),
  fc.record({ op: fc.constant('directory' as const), path: modelPath }),
);

// The model: a flat map from path to value under the domain's home, which always exists.
class TreeModel {
  readonly m = new Map<string, string>([[HOME5, '']]);

  private parent(p: string): string {
    return p.slice(0, p.lastIndexOf('/'));
  }

  private ensure(p: string): void {
    if (this.m.has(p)) return;
    this.ensure(this.parent(p));
    this.m.set(p, '');
  }

  apply(o: Op): XsResult<unknown> {
    const okv = <T>(value: T): XsResult<T> => ({ ok: true, value });
    const no = (error: XsErrno): XsResult<never> => ({ ok: false, error });
    switch (o.op) {
      case 'write':
        this.ensure(o.path);
        this.m.set(o.path, o.value);
        return okv(undefined);
      case 'mkdir':
        this.ensure(o.path);
        return okv(undefined);
      case 'rm':
        if (!this.m.has(o.path)) return this.m.has(this.parent(o.path)) ? okv(undefined) : no('ENOENT');
        for (const k of [...this.m.keys()]) if (k === o.path || k.startsWith(`${o.path}/`)) this.m.delete(k);
        return okv(undefined);
      case 'read':
        return this.m.has(o.path) ? okv(this.m.get(o.path)) : no('ENOENT');
      case 'directory': {
        if (!this.m.has(o.path)) return no('ENOENT');
        const kids = [...this.m.keys()].filter((k) => this.parent(k) === o.path).map((k) => k.slice(o.path.length + 1));
        return okv(kids.sort());
      }
    }
  }
}

function applyOp(c: XsConnection, o: Op, tx: number): XsResult<unknown> {
  switch (o.op) {
    case 'write':
      return c.write(o.path, o.value, tx);
    case 'mkdir':
      return c.mkdir(o.path, tx);
    case 'rm':
      return c.rm(o.path, tx);
    case 'read':
      return c.read(o.path, tx);
    case 'directory': {
      const r = c.directory(o.path, tx);
      return r.ok ? { ok: true, value: [...r.value].sort() } : r;
    }
  }
}

// The tree below `root` as sorted [path, value] pairs.
function dumpTree(c: XsConnection, root: string): [string, string][] {
  const out: [string, string][] = [];
  const walk = (p: string): void => {
    out.push([p, must(c.read(p))]);
    for (const k of must(c.directory(p))) walk(`${p}/${k}`);
  };
  walk(root);
  return out.sort();
}

function sorted(m: Map<string, string>): [string, string][] {
  return [...m].sort();
}

function runModel(t: ExecutionContext, c: XsConnection, ops: Op[], tx: number): TreeModel {
  const model = new TreeModel();
  for (const o of ops) t.deepEqual(applyOp(c, o, tx), model.apply(o), JSON.stringify(o));
  return model;
}

testProp('model: random operations outside transactions match a Map', [fc.array(opArb, { maxLength: 40 })], (t, ops) => {
  const f = setup();
  const model = runModel(t, f.d5, ops, 0);
  t.deepEqual(dumpTree(f.d5, HOME5), sorted(model.m));
  t.is(f.store.ownedNodes(5), model.m.size, 'owner counts follow creation and removal');
});

testProp(
  'model: the same operations inside a transaction match the Map, land on commit, vanish on abort',
  [fc.array(opArb, { maxLength: 40 }), fc.boolean()],
  (t, ops, commit) => {
    const f = setup();
    const before = dumpTree(f.d5, HOME5);
    const tx = must(f.d5.transactionStart());
    const model = runModel(t, f.d5, ops, tx);
    must(f.d5.transactionEnd(tx, commit));
    t.deepEqual(dumpTree(f.d5, HOME5), commit ? sorted(model.m) : before);
    t.is(f.store.ownedNodes(5), commit ? model.m.size : before.length);
  },
);
