// The xenstore tree, as tools/xenstored/{core,transaction,watch,domain}.c keep it: nodes with values, children
// and permission lists; per-connection transactions with generation counts (a conflict answers EAGAIN); watches
// that fire on the changed node and its ancestors' watchers; per-domain quotas. Pure and synchronous: the comlink
// glue lives in xenstore-client.ts. Everything a connection passes in is peer data and is validated here.
//
// Departures from xenstored, each on purpose:
// - The node size quota counts only the value's bytes (xenstored also counts the perms and child names;
//   QEMU's xenstore_impl.c makes the same simplification but answers E2BIG where xenstored answers ENOSPC).
// - Special nodes (@introduceDomain, @releaseDomain) keep permissions but live outside transactions.
// - A connection whose domain was released answers every request with EIO (xenstored drops the connection).
// - Identical pending watch events are not merged; introducing a domain twice answers EEXIST.

import type { XsConnectionApi, XsErrno, XsPerm, XsPermLetter, XsResult } from './xenstore-protocol.js';

/** Largest request or reply payload (xen/include/public/io/xs_wire.h). */
export const XENSTORE_PAYLOAD_MAX = 4096;
/** Longest absolute path (xs_wire.h: "violating these just gets you an error back"). */
export const XENSTORE_ABS_PATH_MAX = 3072;
/** Longest path below /local/domain/<domid>/ for an unprivileged domain (xs_wire.h; core.c canonicalize). */
export const XENSTORE_REL_PATH_MAX = 2048;
/** The "no transaction" id of a request header (xen/include/public/io/xs_wire.h, xenstore.h XBT_NULL). */
export const XBT_NULL = 0;

/** Permission bits (tools/include/xenstore_lib.h). OWNER is what the owner and dom0 get on top of r/w. */
export const XS_PERM_NONE = 0x00;
export const XS_PERM_READ = 0x01;
export const XS_PERM_WRITE = 0x02;
export const XS_PERM_OWNER = 0x08;

/** First reserved domain id (xen/include/public/xen.h DOMID_FIRST_RESERVED); real domains are below it. */
export const DOMID_FIRST_RESERVED = 0x7ff0;

/** Special watch paths fired by the toolstack (docs/misc/xenstore.txt; tools/xenstored/domain.c). */
export const XS_INTRODUCE_DOMAIN = '@introduceDomain';
export const XS_RELEASE_DOMAIN = '@releaseDomain';

/** Per-domain limits; dom0 is exempt from all of them, as in xenstored. */
export interface XsQuotas {
  /** Nodes a domain may own (core.c create_node: ENOSPC). */
  readonly nodesPerDomain: number;
  /** Bytes in one node's value (core.c write_node_raw: ENOSPC). */
  readonly nodeSize: number;
  /** Watches a domain may hold (watch.c do_watch: E2BIG). */
  readonly watchesPerDomain: number;
  /** Open transactions per domain (transaction.c do_transaction_start: ENOSPC). */
  readonly transactionsPerDomain: number;
  /** Entries in one permission list (core.c do_set_perms: ENOSPC). */
  readonly permsPerNode: number;
}

/** QEMU's and xenstored's defaults (hw/i386/kvm/xenstore_impl.c XS_MAX_*; tools/xenstored/core.c quotas). */
export const DEFAULT_XS_QUOTAS: XsQuotas = {
  nodesPerDomain: 1000,
  nodeSize: 2048,
  watchesPerDomain: 128,
  transactionsPerDomain: 10,
  permsPerNode: 5,
};

// A generation for "this node does not exist" (transaction.c NO_GENERATION).
const NO_GENERATION = -1;

interface PermEntry {
  readonly id: number;
  readonly perm: number;
}

// Nodes are immutable once stored: a change stores a new object, so a transaction's snapshot is a reference.
interface Node {
  readonly value: string;
  readonly children: readonly string[];
  readonly perms: readonly PermEntry[];
  readonly generation: number;
}

interface Watch {
  readonly node: string;
  readonly token: string;
  // Characters to strip from event paths for a watch registered with a relative path (watch.c prefix_len).
  readonly prefixLen: number;
}

interface DomainRecord {
  readonly domid: number;
  watches: number;
  transactions: number;
  readonly connections: Set<XsConnection>;
}

// Where an operation reads and writes: the global tree, or one transaction's view of it.
interface View {
  get(path: string): Node | undefined;
  put(path: string, node: Node | undefined): void;
  event(path: string, exact: boolean, oldPerms?: readonly PermEntry[]): void;
  owned(domid: number): number;
}

const VALID_CHARS = /^[A-Za-z0-9\-/_@]*$/;
const PERM_LETTERS: Readonly<Record<XsPermLetter, number>> = {
  n: XS_PERM_NONE,
  r: XS_PERM_READ,
  w: XS_PERM_WRITE,
  b: XS_PERM_READ | XS_PERM_WRITE,
};

function ok<T>(value: T): XsResult<T> {
  return { ok: true, value };
}

function fail<T = never>(error: XsErrno): XsResult<T> {
  return { ok: false, error };
}

const OK_VOID: XsResult<void> = { ok: true, value: undefined };

function byteLength(s: string): number {
  return Buffer.byteLength(s, 'utf8');
}

function isU32(x: unknown): x is number {
  return typeof x === 'number' && Number.isInteger(x) && x >= 0 && x <= 0xffffffff;
}

function isDomid(x: unknown): x is number {
  return typeof x === 'number' && Number.isInteger(x) && x >= 0 && x < DOMID_FIRST_RESERVED;
}

// core.c get_parent: "/a" -> "/", "/a/b" -> "/a".
function parentOf(path: string): string {
  const slash = path.lastIndexOf('/');
  return slash <= 0 ? '/' : path.slice(0, slash);
}

function basename(path: string): string {
  return path.slice(path.lastIndexOf('/') + 1);
}

function childPath(parent: string, name: string): string {
  return parent === '/' ? `/${name}` : `${parent}/${name}`;
}

// watch.c is_child: child equals parent or lies below it; everything lies below "/".
function isChild(child: string, parent: string): boolean {
  if (parent === '/') return true;
  if (!child.startsWith(parent)) return false;
  return child.length === parent.length || child.charCodeAt(parent.length) === 0x2f;
}

function permLetter(perm: number): XsPermLetter {
  switch (perm & (XS_PERM_READ | XS_PERM_WRITE)) {
    case XS_PERM_READ | XS_PERM_WRITE:
      return 'b';
    case XS_PERM_READ:
      return 'r';
    case XS_PERM_WRITE:
      return 'w';
    default:
      return 'n';
  }
}

function permsToWire(perms: readonly PermEntry[]): XsPerm[] {
  return perms.map((p) => ({ id: p.id, perm: permLetter(p.perm) }));
}

// Peer data: an array of {id, perm} with a domid and a known letter, else EINVAL (xs_lib.c xenstore_strings_to_perms).
function permsFromWire(perms: unknown): XsResult<PermEntry[]> {
  if (!Array.isArray(perms) || perms.length === 0) return fail('EINVAL');
  const out: PermEntry[] = [];
  for (const p of perms as unknown[]) {
    if (typeof p !== 'object' || p === null) return fail('EINVAL');
    const { id, perm } = p as { id?: unknown; perm?: unknown };
    if (!isDomid(id) || typeof perm !== 'string' || !Object.hasOwn(PERM_LETTERS, perm)) return fail('EINVAL');
    out.push({ id, perm: PERM_LETTERS[perm as XsPermLetter] });
  }
  return ok(out);
}

// The shared state behind a XenStore and its connections.
class Tree {
  readonly nodes = new Map<string, Node>();
  readonly ownedCounts = new Map<number, number>();
  readonly domains = new Map<number, DomainRecord>();
  readonly connections = new Set<XsConnection>();
  readonly specialPerms = new Map<string, readonly PermEntry[]>();
  readonly pending: { conn: XsConnection; path: string; token: string }[] = [];
  private flushing = false;
  generation = 0;

  constructor(readonly quotas: XsQuotas) {}

  owned(domid: number): number {
    return this.ownedCounts.get(domid) ?? 0;
  }

  private addOwned(domid: number, delta: number): void {
    const n = this.owned(domid) + delta;
    if (n === 0) this.ownedCounts.delete(domid);
    else this.ownedCounts.set(domid, n);
  }

  /** Stores (or deletes) a node in the global tree, stamping a new generation and keeping owner counts. */
  put(path: string, node: Node | undefined): void {
    const old = this.nodes.get(path);
    if (old !== undefined) this.addOwned(old.perms[0]!.id, -1);
    if (node === undefined) {
      this.nodes.delete(path);
      return;
    }
    this.addOwned(node.perms[0]!.id, 1);
    this.nodes.set(path, { ...node, generation: ++this.generation });
  }

  // core.c perm_for_conn: owners and tools get it all; then the first matching ACL entry; else the default.
  permFor(conn: XsConnection, perms: readonly PermEntry[]): number {
    if (conn.privileged || perms[0]!.id === conn.domid) return XS_PERM_READ | XS_PERM_WRITE | XS_PERM_OWNER;
    for (let i = 1; i < perms.length; i++) if (perms[i]!.id === conn.domid) return perms[i]!.perm;
    return perms[0]!.perm;
  }

  // watch.c watch_permitted: the old perms, the node, or its parent must let the watcher read.
  private watchPermitted(conn: XsConnection, name: string, oldPerms: readonly PermEntry[] | undefined): boolean {
    if (oldPerms !== undefined && (this.permFor(conn, oldPerms) & XS_PERM_READ) !== 0) return true;
    const node = this.nodes.get(name);
    if (node === undefined) return false;
    if ((this.permFor(conn, node.perms) & XS_PERM_READ) !== 0) return true;
    const parent = this.nodes.get(parentOf(name));
    return parent !== undefined && (this.permFor(conn, parent.perms) & XS_PERM_READ) !== 0;
  }

  /** Queues an event for every watch matching a change of `name` (watch.c fire_watches). */
  fire(name: string, exact: boolean, oldPerms?: readonly PermEntry[]): void {
    for (const conn of this.connections) {
      let permitted: boolean | undefined;
      for (const w of conn.watchList) {
        if (exact ? w.node !== name : !isChild(name, w.node)) continue;
        permitted ??= this.watchPermitted(conn, name, oldPerms);
        if (!permitted) break;
        this.pending.push({ conn, path: name.slice(w.prefixLen), token: w.token });
      }
    }
  }

  /** Queues the special event `name` for watchers the special node's perms let read (domain.c fire_special_watches). */
  fireSpecial(name: string): void {
    const perms = this.specialPerms.get(name)!;
    for (const conn of this.connections) {
      if ((this.permFor(conn, perms) & XS_PERM_READ) === 0) continue;
      for (const w of conn.watchList) if (w.node === name) this.pending.push({ conn, path: name, token: w.token });
    }
  }

  /** Delivers queued events once the operation that caused them is complete, so sinks never see a half-done change. */
  flush(): void {
    if (this.flushing) return;
    this.flushing = true;
    try {
      for (let i = 0; i < this.pending.length; i++) {
        const e = this.pending[i]!;
        e.conn.deliver(e.path, e.token);
      }
    } finally {
      this.pending.length = 0;
      this.flushing = false;
    }
  }
}

// Operations on the global tree outside any transaction: changes land at once and watches fire at once.
class GlobalView implements View {
  constructor(private readonly tree: Tree) {}
  get(path: string): Node | undefined {
    return this.tree.nodes.get(path);
  }
  put(path: string, node: Node | undefined): void {
    this.tree.put(path, node);
  }
  event(path: string, exact: boolean, oldPerms?: readonly PermEntry[]): void {
    this.tree.fire(path, exact, oldPerms);
  }
  owned(domid: number): number {
    return this.tree.owned(domid);
  }
}

interface Accessed {
  // The node's generation when this transaction first touched it (transaction.c accessed_node.generation).
  readonly generation: number;
  // The perms when first touched, so a watcher who could read the old node still hears of the change.
  readonly oldPerms: readonly PermEntry[] | undefined;
  node: Node | undefined;
  modified: boolean;
  // 0: no event; 1: exact event; 2: event for this node and its watching ancestors.
  fire: 0 | 1 | 2;
}

// One transaction: every node it touches is snapshotted at first access; commit succeeds only if none of
// them changed in the global tree since (transaction.c: generation counts), then its changes land together.
class Transaction implements View {
  readonly accessed = new Map<string, Accessed>();
  readonly ownedDelta = new Map<number, number>();

  constructor(
    private readonly tree: Tree,
    readonly id: number,
  ) {}

  private entry(path: string): Accessed {
    let e = this.accessed.get(path);
    if (e === undefined) {
      const g = this.tree.nodes.get(path);
      e = { generation: g?.generation ?? NO_GENERATION, oldPerms: g?.perms, node: g, modified: false, fire: 0 };
      this.accessed.set(path, e);
    }
    return e;
  }

  private addDelta(domid: number, delta: number): void {
    this.ownedDelta.set(domid, (this.ownedDelta.get(domid) ?? 0) + delta);
  }

  get(path: string): Node | undefined {
    return this.entry(path).node;
  }

  put(path: string, node: Node | undefined): void {
    const e = this.entry(path);
    if (e.node !== undefined) this.addDelta(e.node.perms[0]!.id, -1);
    if (node !== undefined) this.addDelta(node.perms[0]!.id, 1);
    e.node = node;
    e.modified = true;
  }

  // transaction.c queue_watches: a non-exact event replaces an exact one, not the other way round.
  event(path: string, exact: boolean): void {
    const e = this.entry(path);
    if (!exact) e.fire = 2;
    else if (e.fire === 0) e.fire = 1;
  }

  owned(domid: number): number {
    return this.tree.owned(domid) + (this.ownedDelta.get(domid) ?? 0);
  }

  /** Applies the transaction if nothing it touched changed meanwhile (transaction.c finalize_transaction). */
  commit(conn: XsConnection): XsResult<void> {
    for (const [path, e] of this.accessed) {
      if ((this.tree.nodes.get(path)?.generation ?? NO_GENERATION) !== e.generation) return fail('EAGAIN');
    }
    // transaction.c do_transaction_end: an unprivileged domain's node quota is checked again at commit.
    if (!conn.privileged) {
      for (const [domid, delta] of this.ownedDelta) {
        if (delta > 0 && this.tree.owned(domid) + delta > this.tree.quotas.nodesPerDomain) return fail('ENOSPC');
      }
    }
    for (const [path, e] of this.accessed) if (e.modified) this.tree.put(path, e.node);
    for (const [path, e] of this.accessed) if (e.fire !== 0) this.tree.fire(path, e.fire === 1, e.oldPerms);
    return OK_VOID;
  }
}

/** The xenstore daemon's state: the tree, the domains and their connections; the toolstack's side of the API. */
export class XenStore {
  private readonly tree: Tree;

  constructor(quotas: Partial<XsQuotas> = {}) {
    this.tree = new Tree({ ...DEFAULT_XS_QUOTAS, ...quotas });
    const dom0Only: readonly PermEntry[] = [{ id: 0, perm: XS_PERM_NONE }];
    // core.c setup_structure: the root and the special nodes belong to the privileged domain.
    for (const path of ['/', '/local', '/local/domain']) {
      const children = path === '/' ? ['local'] : path === '/local' ? ['domain'] : [];
      this.tree.put(path, { value: '', children, perms: dom0Only, generation: 0 });
    }
    this.tree.specialPerms.set(XS_INTRODUCE_DOMAIN, dom0Only);
    this.tree.specialPerms.set(XS_RELEASE_DOMAIN, dom0Only);
    this.tree.domains.set(0, { domid: 0, watches: 0, transactions: 0, connections: new Set() });
  }

  /** Makes a domain known and fires @introduceDomain (domain.c introduce_domain). */
  introduceDomain(domid: number): XsResult<void> {
    if (!isDomid(domid)) return fail('EINVAL');
    if (this.tree.domains.has(domid)) return fail('EEXIST');
    this.tree.domains.set(domid, { domid, watches: 0, transactions: 0, connections: new Set() });
    this.tree.fireSpecial(XS_INTRODUCE_DOMAIN);
    this.tree.flush();
    return OK_VOID;
  }

  /**
   * Forgets a dead domain: closes its connections (dropping their watches and transactions), gives its nodes to
   * dom0, drops it from ACLs and fires @releaseDomain (domain.c destroy_domain, domain_adjust_node_perms).
   */
  releaseDomain(domid: number): XsResult<void> {
    if (!isDomid(domid) || domid === 0) return fail('EINVAL');
    const dom = this.tree.domains.get(domid);
    if (dom === undefined) return fail('ENOENT');
    for (const conn of [...dom.connections]) conn.close();
    this.tree.domains.delete(domid);
    for (const [path, node] of [...this.tree.nodes]) {
      if (!node.perms.some((p) => p.id === domid)) continue;
      const head = node.perms[0]!.id === domid ? { id: 0, perm: node.perms[0]!.perm } : node.perms[0]!;
      const rest = node.perms.slice(1).filter((p) => p.id !== domid);
      // A new generation: a transaction that saw the old perms must not write them back.
      this.tree.put(path, { ...node, perms: [head, ...rest] });
    }
    this.tree.fireSpecial(XS_RELEASE_DOMAIN);
    this.tree.flush();
    return OK_VOID;
  }

  /** Opens a connection for a known domain; domain 0 is privileged. ENOENT for an unknown domain. */
  connect(domid: number): XsResult<XsConnection> {
    if (!isDomid(domid)) return fail('EINVAL');
    const dom = this.tree.domains.get(domid);
    if (dom === undefined) return fail('ENOENT');
    const conn = new XsConnection(this.tree, dom);
    dom.connections.add(conn);
    this.tree.connections.add(conn);
    return ok(conn);
  }

  /** Whether a domain is known (introduced and not released). */
  isIntroduced(domid: number): boolean {
    return this.tree.domains.has(domid);
  }

  /** How many nodes the tree holds, for leak checks. */
  nodeCount(): number {
    return this.tree.nodes.size;
  }

  /** How many nodes a domain owns (what its node quota counts). */
  ownedNodes(domid: number): number {
    return this.tree.owned(domid);
  }

  /** Open watches and transactions of a domain, for leak checks; undefined for an unknown domain. */
  domainUsage(domid: number): { watches: number; transactions: number } | undefined {
    const d = this.tree.domains.get(domid);
    return d === undefined ? undefined : { watches: d.watches, transactions: d.transactions };
  }
}

/**
 * One domain's connection to the store (a xenstored connection). Every method is synchronous and returns
 * xenstored's errno name rather than throwing, so the object can be exposed over comlink as it is.
 */
export class XsConnection implements XsConnectionApi {
  readonly domid: number;
  readonly privileged: boolean;
  /** @internal The watches of this connection, in registration order. */
  readonly watchList: Watch[] = [];
  private readonly transactions = new Map<number, Transaction>();
  private readonly global: GlobalView;
  private nextTx = 1;
  private alive = true;
  private sink: ((path: string, token: string) => void) | null = null;
  private readonly buffered: [string, string][] = [];

  /** @internal Built by XenStore.connect. */
  constructor(
    private readonly tree: Tree,
    private readonly dom: DomainRecord,
  ) {
    this.domid = dom.domid;
    this.privileged = dom.domid === 0;
    this.global = new GlobalView(tree);
  }

  /** Whether the connection was closed (its domain released). */
  get closed(): boolean {
    return !this.alive;
  }

  /** Sets where watch events go; events raised while no sink was set are delivered to the new sink first. */
  setWatchSink(sink: ((path: string, token: string) => void) | null): void {
    this.sink = sink;
    if (sink === null) return;
    while (this.buffered.length > 0 && this.sink === sink) {
      const [path, token] = this.buffered.shift()!;
      sink(path, token);
    }
  }

  /** @internal Hands one event to the sink, or keeps it until a sink is set. */
  deliver(path: string, token: string): void {
    if (!this.alive) return;
    if (this.sink === null) this.buffered.push([path, token]);
    else this.sink(path, token);
  }

  /** Closes the connection: drops its watches and transactions and refuses further requests with EIO. */
  close(): void {
    if (!this.alive) return;
    this.dropWatches();
    this.dropTransactions();
    this.alive = false;
    this.sink = null;
    this.buffered.length = 0;
    this.dom.connections.delete(this);
    this.tree.connections.delete(this);
  }

  private dropWatches(): void {
    this.dom.watches -= this.watchList.length;
    this.watchList.length = 0;
  }

  private dropTransactions(): void {
    this.dom.transactions -= this.transactions.size;
    this.transactions.clear();
  }

  // Runs one request: refuses it on a closed connection, and delivers the events it raised once it is done.
  private run<T>(op: () => XsResult<T>): XsResult<T> {
    if (!this.alive) return fail('EIO');
    try {
      return op();
    } finally {
      this.tree.flush();
    }
  }

  // core.c process_message: the transaction id of the header is looked up before anything else.
  private view(tx: unknown): XsResult<View> {
    if (tx === undefined || tx === XBT_NULL) return ok(this.global);
    if (!isU32(tx)) return fail('EINVAL');
    const t = this.transactions.get(tx);
    return t === undefined ? fail('ENOENT') : ok(t);
  }

  // core.c canonicalize: allowed characters, '@' only where special names are, no trailing or double slash,
  // relative paths under /local/domain/<domid>, and the path-length limits.
  private canonicalize(path: unknown, allowSpecial: boolean): XsResult<string> {
    if (typeof path !== 'string' || path.length === 0 || !VALID_CHARS.test(path)) return fail('EINVAL');
    if (path[0] === '@') return allowSpecial ? ok(path) : fail('EINVAL');
    const name = path[0] === '/' ? path : `/local/domain/${this.domid}/${path}`;
    if ((name.endsWith('/') && name !== '/') || name.includes('//')) return fail('EINVAL');
    if (name.length > XENSTORE_ABS_PATH_MAX) return fail('EINVAL');
    if (!this.privileged) {
      const m = /^\/local\/domain\/\d{1,5}\//.exec(name);
      const localOff = m === null ? 0 : m[0].length;
      if (name.length - localOff > XENSTORE_REL_PATH_MAX) return fail('EINVAL');
    }
    return ok(name);
  }

  // core.c get_node + errno_from_parents: a node we may not use, or a missing one under an ancestor that does not
  // grant the access, answers EACCES so that the error reveals nothing about the node.
  private getChecked(v: View, name: string, want: number): XsResult<Node> {
    const node = v.get(name);
    if (node !== undefined && (this.tree.permFor(this, node.perms) & want) === want) return ok(node);
    const errnum: XsErrno = node === undefined ? 'ENOENT' : 'EACCES';
    let ancestor = name;
    let found: Node | undefined;
    do {
      ancestor = parentOf(ancestor);
      found = v.get(ancestor);
    } while (found === undefined && ancestor !== '/');
    if (found === undefined) throw new Error('xenstore: the root node is missing');
    return (this.tree.permFor(this, found.perms) & want) !== 0 ? fail(errnum) : fail('EACCES');
  }

  // core.c construct_node/create_node: creates the node and any missing ancestors; new nodes inherit the parent's
  // perms, and an unprivileged creator becomes their owner. All or nothing under the node quota.
  private create(v: View, name: string, value: string): XsResult<void> {
    const missing = [name];
    let top = parentOf(name);
    while (v.get(top) === undefined) {
      missing.push(top);
      top = parentOf(top);
    }
    if (!this.privileged && v.owned(this.domid) + missing.length > this.tree.quotas.nodesPerDomain) {
      return fail('ENOSPC');
    }
    let parentPath = top;
    let parent = v.get(top)!;
    for (let i = missing.length - 1; i >= 0; i--) {
      const path = missing[i]!;
      const perms = this.privileged
        ? parent.perms
        : [{ id: this.domid, perm: parent.perms[0]!.perm }, ...parent.perms.slice(1)];
      const node: Node = { value: i === 0 ? value : '', children: [], perms, generation: 0 };
      v.put(parentPath, { ...parent, children: [...parent.children, basename(path)] });
      v.put(path, node);
      parentPath = path;
      parent = node;
    }
    return OK_VOID;
  }

  /** Reads a node's value (XS_READ). */
  read(path: string, tx?: number): XsResult<string> {
    return this.run(() => {
      const v = this.view(tx);
      if (!v.ok) return v;
      const name = this.canonicalize(path, false);
      if (!name.ok) return name;
      const node = this.getChecked(v.value, name.value, XS_PERM_READ);
      return node.ok ? ok(node.value.value) : node;
    });
  }

  /** Writes a node's value, creating it and its missing ancestors (XS_WRITE). */
  write(path: string, value: string, tx?: number): XsResult<void> {
    return this.run(() => {
      if (typeof value !== 'string') return fail('EINVAL');
      if (typeof path === 'string' && byteLength(path) + 1 + byteLength(value) > XENSTORE_PAYLOAD_MAX) {
        return fail('E2BIG');
      }
      const v = this.view(tx);
      if (!v.ok) return v;
      const name = this.canonicalize(path, false);
      if (!name.ok) return name;
      const node = this.getChecked(v.value, name.value, XS_PERM_WRITE);
      if (!node.ok && node.error !== 'ENOENT') return node;
      if (!this.privileged && byteLength(value) > this.tree.quotas.nodeSize) return fail('ENOSPC');
      if (node.ok) {
        v.value.put(name.value, { ...node.value, value });
      } else {
        const made = this.create(v.value, name.value, value);
        if (!made.ok) return made;
      }
      v.value.event(name.value, false);
      return OK_VOID;
    });
  }

  /** Creates an empty node unless it exists (XS_MKDIR). */
  mkdir(path: string, tx?: number): XsResult<void> {
    return this.run(() => {
      const v = this.view(tx);
      if (!v.ok) return v;
      const name = this.canonicalize(path, false);
      if (!name.ok) return name;
      const node = this.getChecked(v.value, name.value, XS_PERM_WRITE);
      if (node.ok) return OK_VOID;
      if (node.error !== 'ENOENT') return node;
      const made = this.create(v.value, name.value, '');
      if (!made.ok) return made;
      v.value.event(name.value, false);
      return OK_VOID;
    });
  }

  /** Removes a node and everything below it; a missing node whose parent exists is fine (XS_RM). */
  rm(path: string, tx?: number): XsResult<void> {
    return this.run(() => {
      const v = this.view(tx);
      if (!v.ok) return v;
      const name = this.canonicalize(path, false);
      if (!name.ok) return name;
      const node = this.getChecked(v.value, name.value, XS_PERM_WRITE);
      if (!node.ok) {
        if (node.error === 'ENOENT' && v.value.get(parentOf(name.value)) !== undefined) return OK_VOID;
        return node;
      }
      if (name.value === '/') return fail('EINVAL');
      // core.c delnode_sub: children first; each fires while its perms are still visible.
      const order: string[] = [];
      const walk = (p: string): void => {
        for (const c of v.value.get(p)!.children) walk(childPath(p, c));
        order.push(p);
      };
      walk(name.value);
      for (const p of order) {
        v.value.event(p, p !== name.value);
        v.value.put(p, undefined);
      }
      const parentPath = parentOf(name.value);
      const parent = v.value.get(parentPath)!;
      const base = basename(name.value);
      v.value.put(parentPath, { ...parent, children: parent.children.filter((c) => c !== base) });
      return OK_VOID;
    });
  }

  /** Lists a node's children, in creation order (XS_DIRECTORY). */
  directory(path: string, tx?: number): XsResult<string[]> {
    return this.run(() => {
      const v = this.view(tx);
      if (!v.ok) return v;
      const name = this.canonicalize(path, false);
      if (!name.ok) return name;
      const node = this.getChecked(v.value, name.value, XS_PERM_READ);
      return node.ok ? ok([...node.value.children]) : node;
    });
  }

  /** Reads a node's permission list (XS_GET_PERMS); also works on the special nodes. */
  getPerms(path: string, tx?: number): XsResult<XsPerm[]> {
    return this.run(() => {
      const v = this.view(tx);
      if (!v.ok) return v;
      const name = this.canonicalize(path, true);
      if (!name.ok) return name;
      if (name.value[0] === '@') {
        const perms = this.tree.specialPerms.get(name.value);
        if (perms === undefined) return fail('ENOENT');
        return (this.tree.permFor(this, perms) & XS_PERM_READ) !== 0 ? ok(permsToWire(perms)) : fail('EACCES');
      }
      const node = this.getChecked(v.value, name.value, XS_PERM_READ);
      return node.ok ? ok(permsToWire(node.value.perms)) : node;
    });
  }

  /** Replaces a node's permission list; owner or dom0 only, and only dom0 may change the owner (XS_SET_PERMS). */
  setPerms(path: string, perms: readonly XsPerm[], tx?: number): XsResult<void> {
    return this.run(() => {
      const parsed = permsFromWire(perms);
      if (!parsed.ok) return parsed;
      if (!this.privileged && parsed.value.length > this.tree.quotas.permsPerNode) return fail('ENOSPC');
      const v = this.view(tx);
      if (!v.ok) return v;
      const name = this.canonicalize(path, true);
      if (!name.ok) return name;
      const want = XS_PERM_WRITE | XS_PERM_OWNER;
      if (name.value[0] === '@') {
        const old = this.tree.specialPerms.get(name.value);
        if (old === undefined) return fail('ENOENT');
        if ((this.tree.permFor(this, old) & want) !== want) return fail('EACCES');
        this.tree.specialPerms.set(name.value, parsed.value);
        return OK_VOID;
      }
      const node = this.getChecked(v.value, name.value, want);
      if (!node.ok) return node;
      if (!this.privileged && parsed.value[0]!.id !== node.value.perms[0]!.id) return fail('EPERM');
      v.value.put(name.value, { ...node.value, perms: parsed.value });
      v.value.event(name.value, false, node.value.perms);
      return OK_VOID;
    });
  }

  /** Starts a transaction and returns its id (XS_TRANSACTION_START). */
  transactionStart(): XsResult<number> {
    return this.run(() => {
      if (!this.privileged && this.dom.transactions >= this.tree.quotas.transactionsPerDomain) return fail('ENOSPC');
      // transaction.c: pick an unused id; 0 is XBT_NULL.
      while (this.nextTx === XBT_NULL || this.transactions.has(this.nextTx)) this.nextTx = (this.nextTx + 1) >>> 0;
      const id = this.nextTx;
      this.nextTx = (this.nextTx + 1) >>> 0;
      this.transactions.set(id, new Transaction(this.tree, id));
      this.dom.transactions++;
      return ok(id);
    });
  }

  /** Ends a transaction: commit applies it unless a node it touched changed meanwhile (EAGAIN); the id is gone either way. */
  transactionEnd(tx: number, commit: boolean): XsResult<void> {
    return this.run(() => {
      if (!isU32(tx) || typeof commit !== 'boolean') return fail('EINVAL');
      const t = this.transactions.get(tx);
      if (t === undefined) return fail('ENOENT');
      this.transactions.delete(tx);
      this.dom.transactions--;
      return commit ? t.commit(this) : OK_VOID;
    });
  }

  /** Watches a path and everything below it; fires once at once, as xenstored does (XS_WATCH). */
  watch(path: string, token: string): XsResult<void> {
    return this.run(() => {
      if (typeof token !== 'string') return fail('EINVAL');
      const name = this.canonicalize(path, true);
      if (!name.ok) return name;
      if (this.watchList.some((w) => w.node === name.value && w.token === token)) return fail('EEXIST');
      if (!this.privileged && this.dom.watches >= this.tree.quotas.watchesPerDomain) return fail('E2BIG');
      const relative = path[0] !== '/' && path[0] !== '@';
      const w: Watch = { node: name.value, token, prefixLen: relative ? `/local/domain/${this.domid}/`.length : 0 };
      this.watchList.push(w);
      this.dom.watches++;
      this.tree.pending.push({ conn: this, path: w.node.slice(w.prefixLen), token });
      return OK_VOID;
    });
  }

  /** Removes the watch with this path and token (XS_UNWATCH). */
  unwatch(path: string, token: string): XsResult<void> {
    return this.run(() => {
      if (typeof token !== 'string') return fail('EINVAL');
      const name = this.canonicalize(path, true);
      if (!name.ok) return name;
      const i = this.watchList.findIndex((w) => w.node === name.value && w.token === token);
      if (i < 0) return fail('ENOENT');
      this.watchList.splice(i, 1);
      this.dom.watches--;
      return OK_VOID;
    });
  }

  /** Drops all of this connection's watches and transactions (XS_RESET_WATCHES). */
  resetWatches(): XsResult<void> {
    return this.run(() => {
      this.dropWatches();
      this.dropTransactions();
      return OK_VOID;
    });
  }

  /** The home path of a domain (XS_GET_DOMAIN_PATH). */
  getDomainPath(domid: number): XsResult<string> {
    return this.run(() => (isDomid(domid) ? ok(`/local/domain/${domid}`) : fail('EINVAL')));
  }

  /** Whether a domain is still known; privileged only (XS_IS_DOMAIN_INTRODUCED, XS_FLAG_PRIV). */
  isDomainIntroduced(domid: number): XsResult<boolean> {
    return this.run(() => {
      if (!this.privileged) return fail('EACCES');
      return isDomid(domid) ? ok(this.tree.domains.has(domid)) : fail('EINVAL');
    });
  }
}
