// Pods bound to this node: one podRunner each, from Pending to its end and the removal of its object.

package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

func (a *agent) observe(ctx context.Context, pod *corev1.Pod) {
	a.mu.Lock()
	runner, known := a.pods[pod.UID]
	if !known {
		if pod.DeletionTimestamp != nil || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			a.mu.Unlock()
			if pod.DeletionTimestamp != nil {
				// Nothing of ours runs for it (e.g. it ended before the agent restarted): just remove it.
				go a.removePodObject(ctx, pod)
			}
			return
		}
		runner = &podRunner{agent: a, pod: pod.DeepCopy(), deleted: make(chan struct{}),
			dir: filepath.Join(a.stateDir, "pods", string(pod.UID))}
		runner.ip = a.allocateIP(pod)
		a.pods[pod.UID] = runner
		a.mu.Unlock()
		go runner.run(ctx)
		return
	}
	a.mu.Unlock()
	if pod.DeletionTimestamp != nil {
		runner.requestDelete(pod)
	}
}

func (a *agent) forget(uid types.UID) {
	a.mu.Lock()
	runner := a.pods[uid]
	a.mu.Unlock()
	if runner != nil {
		runner.requestDelete(nil)
	}
}

func (a *agent) release(r *podRunner) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.pods, r.pod.UID)
	if a.ips[r.ip] == r.pod.UID {
		delete(a.ips, r.ip)
	}
}

func (a *agent) allocateIP(pod *corev1.Pod) string {
	if pod.Spec.HostNetwork {
		return "127.0.0.1"
	}
	for i := 2; i < 255*254; i++ {
		ip := fmt.Sprintf("127.1.%d.%d", i/254, i%254+1)
		if _, used := a.ips[ip]; !used {
			a.ips[ip] = pod.UID
			return ip
		}
	}
	return "127.0.0.1"
}

func (a *agent) stopAll() {
	a.mu.Lock()
	runners := make([]*podRunner, 0, len(a.pods))
	for _, r := range a.pods {
		runners = append(runners, r)
	}
	a.mu.Unlock()
	var wg sync.WaitGroup
	for _, r := range runners {
		wg.Add(1)
		go func() { defer wg.Done(); r.killAll(5 * time.Second) }()
	}
	wg.Wait()
}

func (a *agent) removePodObject(ctx context.Context, pod *corev1.Pod) {
	zero := int64(0)
	uid := pod.UID
	err := a.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &uid}})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		log.Printf("pod %s/%s: removing object: %v", pod.Namespace, pod.Name, err)
	}
}

type podRunner struct {
	agent *agent
	dir   string
	ip    string

	mu         sync.Mutex
	pod        *corev1.Pod
	procs      map[string]*exec.Cmd
	ready      map[string]bool
	deleting   bool
	deleted    chan struct{}
	deleteOnce sync.Once
	grace      time.Duration
}

func (r *podRunner) logf(format string, args ...any) {
	log.Printf("pod %s/%s: %s", r.pod.Namespace, r.pod.Name, fmt.Sprintf(format, args...))
}

func (r *podRunner) requestDelete(pod *corev1.Pod) {
	r.mu.Lock()
	r.grace = 30 * time.Second
	if pod != nil && pod.DeletionGracePeriodSeconds != nil {
		r.grace = time.Duration(*pod.DeletionGracePeriodSeconds) * time.Second
	} else if pod == nil {
		r.grace = 0 // the object is already gone (force delete)
	}
	r.deleting = true
	r.mu.Unlock()
	r.deleteOnce.Do(func() { close(r.deleted) })
}

func (r *podRunner) isDeleting() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.deleting
}

// run drives the pod from Pending to its end and, once it is deleted, removes it.
func (r *podRunner) run(ctx context.Context) {
	defer r.agent.release(r)
	r.procs = map[string]*exec.Cmd{}
	r.ready = map[string]bool{}
	startTime := metav1.Now()

	r.logf("bound to this node (uid %s)", r.pod.UID)
	prepared, err := r.prepare(ctx)
	// Retry soon, then less often: the Node authorizer learns of a just-bound pod's ConfigMaps and Secrets a
	// moment after the binding (its graph follows informers); a missing object can take longer. (A kubelet
	// backs a failed volume mount off from 500ms, so on a real node this race costs a little more.)
	retry := 100 * time.Millisecond
	for err != nil {
		var fatal *podError
		if errors.As(err, &fatal) {
			r.logf("cannot run: %v", err)
			r.setStatus(ctx, func(s *corev1.PodStatus) {
				s.Phase = corev1.PodFailed
				s.Reason = fatal.reason
				s.Message = fatal.Error()
			})
			r.waitDeleted(ctx)
			return
		}
		// A missing or not yet readable ConfigMap or Secret: stay Pending (like ContainerCreating), try again.
		r.logf("waiting %v to start: %v", retry, err)
		r.setStatus(ctx, func(s *corev1.PodStatus) {
			s.Phase = corev1.PodPending
			s.HostIP, s.PodIP = "127.0.0.1", ""
			s.Conditions = podConditions(s.Conditions, false, false)
			s.ContainerStatuses = waitingStatuses(r.pod, "ContainerCreating", err.Error())
		})
		select {
		case <-ctx.Done():
			return
		case <-r.deleted:
			r.removeObject(ctx)
			return
		case <-time.After(retry):
		}
		retry = min(2*retry, 2*time.Second)
		prepared, err = r.prepare(ctx)
	}

	finished := make(chan struct{})
	defer close(finished)
	go func() {
		select {
		case <-r.deleted:
			r.mu.Lock()
			grace := r.grace
			r.mu.Unlock()
			r.killAll(grace)
		case <-finished:
		}
	}()
	var wg sync.WaitGroup
	results := make([]containerResult, len(prepared))
	for i, c := range prepared {
		wg.Add(1)
		go func() { defer wg.Done(); results[i] = r.runContainer(ctx, c, startTime) }()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return
	}
	if !r.isDeleting() {
		phase := corev1.PodSucceeded
		for _, res := range results {
			if res.exitCode != 0 {
				phase = corev1.PodFailed
			}
		}
		r.setStatus(ctx, func(s *corev1.PodStatus) { s.Phase = phase; s.Conditions = podConditions(s.Conditions, true, false) })
		r.logf("ended %s", phase)
		r.waitDeleted(ctx)
		return
	}
	r.removeObject(ctx)
}

func (r *podRunner) waitDeleted(ctx context.Context) {
	select {
	case <-ctx.Done():
	case <-r.deleted:
		r.removeObject(ctx)
	}
}

func (r *podRunner) removeObject(ctx context.Context) {
	r.agent.removePodObject(ctx, r.pod)
	_ = os.RemoveAll(r.dir)
}

type podError struct {
	reason string
	msg    string
}

func (e *podError) Error() string { return e.msg }

type preparedContainer struct {
	spec     corev1.Container
	binary   string
	args     []string
	env      []string
	termPath string
	logPath  string
}

// prepare writes the pod's volumes and resolves each container's process. A *podError is final; any other
// error (a ConfigMap or Secret not there yet) is retried.
func (r *podRunner) prepare(ctx context.Context) ([]preparedContainer, error) {
	pod := r.pod
	if len(pod.Spec.InitContainers) > 0 {
		return nil, &podError{"Unsupported", "the local node does not run init containers"}
	}
	volumes := map[string]string{}
	for _, v := range pod.Spec.Volumes {
		dir := filepath.Join(r.dir, "volumes", v.Name)
		if err := r.writeVolume(ctx, v, dir); err != nil {
			return nil, err
		}
		volumes[v.Name] = dir
	}
	var out []preparedContainer
	for _, c := range pod.Spec.Containers {
		binary, err := r.agent.binaryFor(c.Image)
		if err != nil {
			return nil, err
		}
		cdir := filepath.Join(r.dir, "containers", c.Name)
		if err := os.MkdirAll(cdir, 0o755); err != nil {
			return nil, &podError{"RunContainerError", err.Error()}
		}
		termPath := filepath.Join(cdir, "termination-log")
		_ = os.WriteFile(termPath, nil, 0o644)
		rewrite := pathRewriter(c, volumes, termPath)
		env, err := r.containerEnv(ctx, c)
		if err != nil {
			return nil, err
		}
		envMap := map[string]string{}
		for _, kv := range env {
			k, v, _ := strings.Cut(kv, "=")
			envMap[k] = v
		}
		var argv []string
		if len(c.Command) > 0 {
			if filepath.Base(c.Command[0]) != filepath.Base(binary) {
				return nil, &podError{"RunContainerError", fmt.Sprintf(
					"container %s: command %q is not in image %s (the local node runs its binary %s)",
					c.Name, c.Command[0], c.Image, filepath.Base(binary))}
			}
			argv = append(argv, c.Command[1:]...)
		}
		argv = append(argv, c.Args...)
		for i, arg := range argv {
			argv[i] = rewrite(expandVars(arg, envMap))
		}
		for i, kv := range env {
			k, v, _ := strings.Cut(kv, "=")
			env[i] = k + "=" + rewrite(v)
		}
		out = append(out, preparedContainer{spec: c, binary: binary, args: argv, env: env, termPath: termPath,
			logPath: filepath.Join(cdir, "output.log")})
	}
	return out, nil
}

func (a *agent) binaryFor(image string) (string, error) {
	if b, ok := a.cfg.Images[image]; ok {
		return b, nil
	}
	repo := image
	if at := strings.Index(repo, "@"); at >= 0 {
		repo = repo[:at]
	}
	if colon := strings.LastIndex(repo, ":"); colon > strings.LastIndex(repo, "/") {
		repo = repo[:colon]
	}
	if b, ok := a.cfg.Images[repo]; ok {
		return b, nil
	}
	return "", &podError{"ErrImagePull", fmt.Sprintf("image %q has no local binary in the node's config", image)}
}
