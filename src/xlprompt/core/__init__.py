"""The small shared helpers every layer uses: errors, atomic files, paths, progress bars, setting declarations."""
