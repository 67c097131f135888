"""What start-up gives back: the heap pages its temporaries freed (glibc's malloc_trim)."""

from __future__ import annotations

import platform

from twisted.trial.unittest import SynchronousTestCase

from twinkly.app.service import release_freed_memory


class ReleaseFreedMemoryTests(SynchronousTestCase):
    def test_trims_where_glibc_is_the_allocator(self) -> None:
        self.assertEqual(release_freed_memory(), platform.libc_ver()[0] == "glibc")

    def test_freed_pages_go_back_to_the_system(self) -> None:
        if platform.libc_ver()[0] != "glibc":
            self.skipTest("malloc_trim is glibc's")

        def resident() -> int:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1])

        # Blocks above pymalloc's size, with one kept after them: glibc does not give
        # that freed space back by itself (measured: 50 pages without the trim).
        garbage = [bytes(1000) for _ in range(50_000)]  # ~50 MB
        kept = [bytes(1000)]
        before = resident()
        del garbage
        release_freed_memory()
        self.assertLess(resident(), before - 2_000)  # pages (4 KiB): at least 8 MB back
        del kept
