// Paths: a process is not in a mount namespace, so in-container paths are rewritten to where the files are.

package main

import (
	"path/filepath"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// pathRewriter maps in-container paths (volume mounts, the termination message path) to host paths.
func pathRewriter(c corev1.Container, volumes map[string]string, termPath string) func(string) string {
	type mapping struct{ from, to string }
	var maps []mapping
	for _, m := range c.VolumeMounts {
		host := volumes[m.Name]
		if m.SubPath != "" {
			host = filepath.Join(host, m.SubPath)
		}
		maps = append(maps, mapping{strings.TrimSuffix(m.MountPath, "/"), host})
	}
	tp := c.TerminationMessagePath
	if tp == "" {
		tp = corev1.TerminationMessagePathDefault
	}
	maps = append(maps, mapping{tp, termPath})
	sort.Slice(maps, func(i, j int) bool { return len(maps[i].from) > len(maps[j].from) })
	return func(s string) string {
		for _, m := range maps {
			if i := strings.Index(s, m.from); i >= 0 {
				rest := s[i+len(m.from):]
				if rest == "" || rest[0] == '/' {
					return s[:i] + m.to + rest
				}
			}
		}
		return s
	}
}
