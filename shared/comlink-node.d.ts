// comlink's Node adapter is mistyped under NodeNext (TOOLCHAIN.md): declare its default export once here.
declare module 'comlink/dist/esm/node-adapter.mjs' {
  import type { Endpoint } from 'comlink';
  export default function nodeEndpoint(nep: unknown): Endpoint;
}
