package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestPathRewriterMapsMountsAndTheTerminationMessagePath(t *testing.T) {
	c := corev1.Container{
		VolumeMounts: []corev1.VolumeMount{
			{Name: "config", MountPath: "/etc/sluice"},
			{Name: "tls", MountPath: "/etc/sluice/kafka-tls/ca/"},
			{Name: "data", MountPath: "/data", SubPath: "part"},
		},
	}
	volumes := map[string]string{"config": "/pods/p/config", "tls": "/pods/p/tls", "data": "/pods/p/data"}
	rewrite := pathRewriter(c, volumes, "/pods/p/termination-log")
	cases := map[string]string{
		"/etc/sluice/task.yaml":           "/pods/p/config/task.yaml",
		"/etc/sluice/kafka-tls/ca/ca.pem": "/pods/p/tls/ca.pem",
		"--config=/etc/sluice/task.yaml":  "--config=/pods/p/config/task.yaml",
		"/data/x":                         "/pods/p/data/part/x",
		"/dev/termination-log":            "/pods/p/termination-log",
		"/etc/sluicey/other":              "/etc/sluicey/other",
		"no path here":                    "no path here",
	}
	for in, want := range cases {
		if got := rewrite(in); got != want {
			t.Errorf("rewrite(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestExpandVarsReplacesKnownReferencesOnly(t *testing.T) {
	env := map[string]string{"POD_IP": "127.1.0.2", "PORT": "8080"}
	if got := expandVars("$(POD_IP):$(PORT)", env); got != "127.1.0.2:8080" {
		t.Errorf("got %q", got)
	}
	if got := expandVars("$(MISSING) stays", env); got != "$(MISSING) stays" {
		t.Errorf("got %q", got)
	}
}

func TestFieldValueReadsTheDownwardAPI(t *testing.T) {
	r := &podRunner{ip: "127.1.0.9", pod: &corev1.Pod{ObjectMeta: metav1.ObjectMeta{
		Name: "orders-task-0", Namespace: "shop", UID: "uid-1",
		Labels: map[string]string{"sluice.dev/task": "0"},
	}}}
	for path, want := range map[string]string{
		"metadata.name":                      "orders-task-0",
		"metadata.namespace":                 "shop",
		"metadata.uid":                       "uid-1",
		"status.podIP":                       "127.1.0.9",
		"metadata.labels['sluice.dev/task']": "0",
	} {
		got, err := r.fieldValue(path)
		if err != nil || got != want {
			t.Errorf("fieldValue(%q) = %q, %v; want %q", path, got, err, want)
		}
	}
	_, err := r.fieldValue("spec.unknown")
	var pe *podError
	if !errors.As(err, &pe) || pe.reason != "CreateContainerConfigError" {
		t.Errorf("an unsupported field is a pod error, got %v", err)
	}
}

func TestPodConditionsKeepTransitionTimesWhileUnchanged(t *testing.T) {
	first := podConditions(nil, true, false)
	if len(first) != 4 || first[3].Type != corev1.PodReady || first[3].Status != corev1.ConditionFalse {
		t.Fatalf("unexpected conditions %+v", first)
	}
	earlier := metav1.NewTime(first[0].LastTransitionTime.Add(-3600 * 1e9))
	for i := range first {
		first[i].LastTransitionTime = earlier
	}
	again := podConditions(first, true, true)
	if !again[0].LastTransitionTime.Equal(&earlier) {
		t.Errorf("PodScheduled stayed True: its transition time must stay")
	}
	if again[3].Status != corev1.ConditionTrue || again[3].LastTransitionTime.Equal(&earlier) {
		t.Errorf("Ready turned True: it needs a new transition time, got %+v", again[3])
	}
}

func TestTerminationMessageFallsBackToTheLogTailOnFailure(t *testing.T) {
	dir := t.TempDir()
	c := preparedContainer{
		spec:     corev1.Container{TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError},
		termPath: filepath.Join(dir, "termination-log"),
		logPath:  filepath.Join(dir, "log"),
	}
	log := strings.Repeat("x", 5000) + "panicked at the end"
	if err := os.WriteFile(c.logPath, []byte(log), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(c.termPath, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	msg := terminationMessage(c, 1)
	if len(msg) != fallbackLogBytes || !strings.HasSuffix(msg, "panicked at the end") {
		t.Errorf("want the last %d bytes of the log, got %d bytes", fallbackLogBytes, len(msg))
	}
	if msg := terminationMessage(c, 0); msg != "" {
		t.Errorf("a successful container has no fallback message, got %q", msg)
	}
	if err := os.WriteFile(c.termPath, []byte(`{"reason":"ResumeTokenLost"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if msg := terminationMessage(c, 4); msg != `{"reason":"ResumeTokenLost"}` {
		t.Errorf("the message file wins, got %q", msg)
	}
}

func TestWriteFilesPicksItemsByKey(t *testing.T) {
	dir := t.TempDir()
	files := map[string][]byte{"task-0.yaml": []byte("a: 1"), "task-1.yaml": []byte("a: 2")}
	err := writeFiles(dir, files, []corev1.KeyToPath{{Key: "task-1.yaml", Path: "task.yaml"}})
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(dir, "task.yaml"))
	if err != nil || string(got) != "a: 2" {
		t.Errorf("task.yaml = %q, %v", got, err)
	}
	if fileExists(filepath.Join(dir, "task-0.yaml")) {
		t.Errorf("keys not listed in items are not written")
	}
	if err := writeFiles(dir, files, []corev1.KeyToPath{{Key: "missing", Path: "x"}}); err == nil {
		t.Errorf("a missing key is an error")
	}
}
