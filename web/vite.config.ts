// Build settings that keep the output compatible with the server's CSP
// (`default-src 'self'`, no inline script, Trusted Types with no policies).
import { defineConfig } from 'vite';

export default defineConfig({
  // Absolute asset URLs: every non-/api path serves index.html, so pages like /m/<id>
  // must still find /assets/...
  base: '/',
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    target: 'es2022',
    // The module preload polyfill would be an extra script; modern browsers do not need it.
    modulePreload: { polyfill: false },
    // Never turn assets into data: URLs (CSP allows only 'self').
    assetsInlineLimit: 0,
    sourcemap: false,
  },
});
