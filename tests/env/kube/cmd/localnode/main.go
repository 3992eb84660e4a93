// Command localnode is the loopback environment's kubelet stand-in: a development and test tool, never part
// of the operator image.
//
// It registers one Ready Node, keeps its Lease fresh so the node lifecycle controller leaves it alone, and runs
// every pod the real scheduler binds to it as local processes:
//
//   - the image names a locally built binary (mapping in the config file); the container's command, if set,
//     must name that binary;
//   - each pod gets its own loopback address (127.1.x.y), reported as status.podIP;
//   - ConfigMap, Secret, downward API, projected (service account token) and emptyDir volumes are written as
//     files under the pod's directory. A process is not in a mount namespace, so a volume's mountPath (and
//     the terminationMessagePath) appearing in the command, args or env values is rewritten to where the files
//     really are;
//   - env, envFrom and the downward API fields (pod name, namespace, UID, node name, pod IP, …) are set;
//   - HTTP readiness probes drive the Ready condition;
//   - status follows a kubelet's: Pending -> Running -> Succeeded/Failed with exit code, reason and the
//     termination message read from terminationMessagePath (or the log tail with FallbackToLogsOnError);
//     restartPolicy Always/OnFailure restart the process with a capped backoff;
//   - deleting a pod sends SIGTERM, waits the grace period, sends SIGKILL, then removes the pod object.
//
// In-cluster API access: a process cannot see the service account token at its fixed in-container path, so
// for pods that automount a token the agent also writes a kubeconfig next to it and sets KUBECONFIG.
//
// Every child process gets the agent's --marker in its environment so the environment can prove nothing of
// it is left running, and is killed if the agent dies (PR_SET_PDEATHSIG).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/yaml"
)

// Config is the agent's config file.
type Config struct {
	// Images maps an image reference, with or without its tag, to the local binary that stands in for it.
	Images map[string]string `json:"images"`
	// Env is added to every container (after the pod's own env is resolved, never overriding it).
	Env map[string]string `json:"env,omitempty"`
	// APIServer is the URL pods use to reach the API server, CAFile its CA (for pods' kubeconfigs).
	APIServer string `json:"apiServer"`
	CAFile    string `json:"caFile"`
}

const (
	leaseDuration    = 40 * time.Second
	heartbeat        = 10 * time.Second
	maxTermMessage   = 4096
	fallbackLogBytes = 2048
	restartBackoff0  = 10 * time.Second
	restartBackoffMx = 5 * time.Minute
)

type agent struct {
	client   kubernetes.Interface
	node     string
	stateDir string
	marker   string
	cfg      Config

	mu   sync.Mutex
	pods map[types.UID]*podRunner
	ips  map[string]types.UID
}

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig with the node's credentials")
	nodeName := flag.String("node-name", "sluice-local", "name of the Node to register")
	stateDir := flag.String("state-dir", "", "directory for pod files and logs")
	configFile := flag.String("config", "", "agent config file (YAML)")
	marker := flag.String("marker", "", "KEY=VALUE put in every child process's environment")
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	if *kubeconfig == "" || *stateDir == "" || *configFile == "" {
		log.Fatal("--kubeconfig, --state-dir and --config are required")
	}
	raw, err := os.ReadFile(*configFile)
	if err != nil {
		log.Fatalf("reading config: %v", err)
	}
	var cfg Config
	if err := yaml.UnmarshalStrict(raw, &cfg); err != nil {
		log.Fatalf("config %s: %v", *configFile, err)
	}
	restCfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		log.Fatalf("kubeconfig: %v", err)
	}
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		log.Fatalf("client: %v", err)
	}
	a := &agent{client: client, node: *nodeName, stateDir: *stateDir, marker: *marker, cfg: cfg,
		pods: map[types.UID]*podRunner{}, ips: map[string]types.UID{}}

	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	if err := a.registerNode(ctx); err != nil {
		log.Fatalf("registering node %s: %v", a.node, err)
	}
	go a.keepNodeAlive(ctx)

	factory := informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", a.node).String()
		}))
	podInformer := factory.Core().V1().Pods().Informer()
	_, _ = podInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { a.observe(ctx, obj.(*corev1.Pod)) },
		UpdateFunc: func(_, obj any) { a.observe(ctx, obj.(*corev1.Pod)) },
		DeleteFunc: func(obj any) {
			if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = tomb.Obj
			}
			if pod, ok := obj.(*corev1.Pod); ok {
				a.forget(pod.UID)
			}
		},
	})
	factory.Start(ctx.Done())
	log.Printf("node %s ready; state in %s", a.node, a.stateDir)
	<-ctx.Done()
	log.Printf("stopping: ending every pod process")
	a.stopAll()
}

// ---- node ----

func (a *agent) registerNode(ctx context.Context) error {
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: a.node, Labels: map[string]string{
			"kubernetes.io/hostname": a.node, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
			"sluice.dev/local-node": "true",
		}},
	}
	_, err := a.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return a.updateNodeStatus(ctx)
}

func (a *agent) updateNodeStatus(ctx context.Context) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		node, err := a.client.CoreV1().Nodes().Get(ctx, a.node, metav1.GetOptions{})
		if err != nil {
			return err
		}
		now := metav1.Now()
		capacity := corev1.ResourceList{
			corev1.ResourceCPU:    resource.MustParse("2"),
			corev1.ResourceMemory: resource.MustParse("24Gi"),
			corev1.ResourcePods:   resource.MustParse("110"),
		}
		node.Status.Capacity = capacity
		node.Status.Allocatable = capacity
		node.Status.Addresses = []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: "127.0.0.1"}, {Type: corev1.NodeHostName, Address: a.node},
		}
		node.Status.NodeInfo = corev1.NodeSystemInfo{
			KubeletVersion: "v1.36.3-sluice-localnode", OperatingSystem: "linux", Architecture: "amd64",
			OSImage: "sluice local node (pods are local processes)", ContainerRuntimeVersion: "local://1",
		}
		cond := func(t corev1.NodeConditionType, s corev1.ConditionStatus, reason, msg string) corev1.NodeCondition {
			c := corev1.NodeCondition{Type: t, Status: s, Reason: reason, Message: msg,
				LastHeartbeatTime: now, LastTransitionTime: now}
			for _, old := range node.Status.Conditions {
				if old.Type == t && old.Status == s {
					c.LastTransitionTime = old.LastTransitionTime
				}
			}
			return c
		}
		node.Status.Conditions = []corev1.NodeCondition{
			cond(corev1.NodeReady, corev1.ConditionTrue, "KubeletReady", "local node agent is posting ready status"),
			cond(corev1.NodeMemoryPressure, corev1.ConditionFalse, "KubeletHasSufficientMemory", ""),
			cond(corev1.NodeDiskPressure, corev1.ConditionFalse, "KubeletHasNoDiskPressure", ""),
			cond(corev1.NodePIDPressure, corev1.ConditionFalse, "KubeletHasSufficientPID", ""),
		}
		_, err = a.client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
		return err
	})
}

// keepNodeAlive renews the node Lease (what the node lifecycle controller watches) and refreshes the status.
func (a *agent) keepNodeAlive(ctx context.Context) {
	seconds := int32(leaseDuration / time.Second)
	tick := time.NewTicker(heartbeat)
	defer tick.Stop()
	for n := 0; ; n++ {
		leases := a.client.CoordinationV1().Leases(corev1.NamespaceNodeLease)
		now := metav1.NewMicroTime(time.Now())
		lease, err := leases.Get(ctx, a.node, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			_, err = leases.Create(ctx, &coordinationv1.Lease{
				ObjectMeta: metav1.ObjectMeta{Name: a.node, Namespace: corev1.NamespaceNodeLease},
				Spec: coordinationv1.LeaseSpec{HolderIdentity: &a.node, LeaseDurationSeconds: &seconds,
					RenewTime: &now},
			}, metav1.CreateOptions{})
		case err == nil:
			lease.Spec.RenewTime = &now
			lease.Spec.HolderIdentity = &a.node
			lease.Spec.LeaseDurationSeconds = &seconds
			_, err = leases.Update(ctx, lease, metav1.UpdateOptions{})
		}
		if err != nil && ctx.Err() == nil {
			log.Printf("renewing node lease: %v", err)
		}
		if n%6 == 5 {
			if err := a.updateNodeStatus(ctx); err != nil && ctx.Err() == nil {
				log.Printf("updating node status: %v", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// ---- pods ----

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

var varRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// expandVars does Kubernetes' $(VAR) expansion for command, args and env values.
func expandVars(s string, env map[string]string) string {
	return varRef.ReplaceAllStringFunc(s, func(ref string) string {
		if v, ok := env[ref[2:len(ref)-1]]; ok {
			return v
		}
		return ref
	})
}

func (r *podRunner) fieldValue(path string) (string, error) {
	p := r.pod
	switch path {
	case "metadata.name":
		return p.Name, nil
	case "metadata.namespace":
		return p.Namespace, nil
	case "metadata.uid":
		return string(p.UID), nil
	case "spec.nodeName":
		return p.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return p.Spec.ServiceAccountName, nil
	case "status.podIP", "status.podIPs":
		return r.ip, nil
	case "status.hostIP", "status.hostIPs":
		return "127.0.0.1", nil
	}
	if m := regexp.MustCompile(`^metadata\.(labels|annotations)\['(.+)'\]$`).FindStringSubmatch(path); m != nil {
		if m[1] == "labels" {
			return p.Labels[m[2]], nil
		}
		return p.Annotations[m[2]], nil
	}
	return "", &podError{"CreateContainerConfigError", fmt.Sprintf("unsupported fieldRef %q", path)}
}

func (r *podRunner) containerEnv(ctx context.Context, c corev1.Container) ([]string, error) {
	core := r.agent.client.CoreV1()
	ns := r.pod.Namespace
	vals := map[string]string{}
	var order []string
	set := func(k, v string) {
		if _, seen := vals[k]; !seen {
			order = append(order, k)
		}
		vals[k] = v
	}
	for _, from := range c.EnvFrom {
		var data map[string]string
		optional := false
		switch {
		case from.ConfigMapRef != nil:
			optional = from.ConfigMapRef.Optional != nil && *from.ConfigMapRef.Optional
			cm, err := core.ConfigMaps(ns).Get(ctx, from.ConfigMapRef.Name, metav1.GetOptions{})
			if err != nil {
				if optional && apierrors.IsNotFound(err) {
					continue
				}
				return nil, fmt.Errorf("configmap %s: %w", from.ConfigMapRef.Name, err)
			}
			data = cm.Data
		case from.SecretRef != nil:
			optional = from.SecretRef.Optional != nil && *from.SecretRef.Optional
			s, err := core.Secrets(ns).Get(ctx, from.SecretRef.Name, metav1.GetOptions{})
			if err != nil {
				if optional && apierrors.IsNotFound(err) {
					continue
				}
				return nil, fmt.Errorf("secret %s: %w", from.SecretRef.Name, err)
			}
			data = map[string]string{}
			for k, v := range s.Data {
				data[k] = string(v)
			}
		}
		for k, v := range data {
			set(from.Prefix+k, v)
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			set(e.Name, expandVars(e.Value, vals))
			continue
		}
		src := e.ValueFrom
		switch {
		case src.FieldRef != nil:
			v, err := r.fieldValue(src.FieldRef.FieldPath)
			if err != nil {
				return nil, err
			}
			set(e.Name, v)
		case src.ConfigMapKeyRef != nil:
			ref := src.ConfigMapKeyRef
			cm, err := core.ConfigMaps(ns).Get(ctx, ref.Name, metav1.GetOptions{})
			if err != nil || cm.Data[ref.Key] == "" && ref.Optional != nil && *ref.Optional {
				if ref.Optional != nil && *ref.Optional {
					continue
				}
				return nil, fmt.Errorf("env %s: configmap %s: %v", e.Name, ref.Name, err)
			}
			v, ok := cm.Data[ref.Key]
			if !ok {
				return nil, fmt.Errorf("env %s: configmap %s has no key %s", e.Name, ref.Name, ref.Key)
			}
			set(e.Name, v)
		case src.SecretKeyRef != nil:
			ref := src.SecretKeyRef
			s, err := core.Secrets(ns).Get(ctx, ref.Name, metav1.GetOptions{})
			if err != nil {
				if ref.Optional != nil && *ref.Optional {
					continue
				}
				return nil, fmt.Errorf("env %s: secret %s: %v", e.Name, ref.Name, err)
			}
			v, ok := s.Data[ref.Key]
			if !ok {
				if ref.Optional != nil && *ref.Optional {
					continue
				}
				return nil, fmt.Errorf("env %s: secret %s has no key %s", e.Name, ref.Name, ref.Key)
			}
			set(e.Name, string(v))
		case src.ResourceFieldRef != nil:
			set(e.Name, "0")
		}
	}
	// What a container runtime and kubelet add around the pod's own env.
	defaults := map[string]string{
		"PATH":     "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOSTNAME": r.pod.Name,
		"HOME":     filepath.Join(r.dir, "home"),
	}
	for k, v := range r.agent.cfg.Env {
		defaults[k] = v
	}
	if kc := filepath.Join(r.dir, "kubeconfig"); fileExists(kc) {
		defaults["KUBECONFIG"] = kc
	}
	keys := make([]string, 0, len(defaults))
	for k := range defaults {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if _, own := vals[k]; !own {
			set(k, defaults[k])
		}
	}
	if r.agent.marker != "" {
		k, v, _ := strings.Cut(r.agent.marker, "=")
		set(k, v)
	}
	env := make([]string, 0, len(order))
	for _, k := range order {
		env = append(env, k+"="+vals[k])
	}
	return env, nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func writeFiles(dir string, files map[string][]byte, items []corev1.KeyToPath) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if len(items) > 0 {
		picked := map[string][]byte{}
		for _, it := range items {
			v, ok := files[it.Key]
			if !ok {
				return fmt.Errorf("key %s not found", it.Key)
			}
			picked[it.Path] = v
		}
		files = picked
	}
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, content, 0o600); err != nil {
			return err
		}
	}
	return nil
}

func (r *podRunner) writeVolume(ctx context.Context, v corev1.Volume, dir string) error {
	core := r.agent.client.CoreV1()
	ns := r.pod.Namespace
	configMapFiles := func(name string, optional *bool) (map[string][]byte, error) {
		cm, err := core.ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			if apierrors.IsNotFound(err) && optional != nil && *optional {
				return map[string][]byte{}, nil
			}
			return nil, fmt.Errorf("volume %s: configmap %s: %w", v.Name, name, err)
		}
		files := map[string][]byte{}
		for k, s := range cm.Data {
			files[k] = []byte(s)
		}
		for k, b := range cm.BinaryData {
			files[k] = b
		}
		return files, nil
	}
	secretFiles := func(name string, optional *bool) (map[string][]byte, error) {
		s, err := core.Secrets(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			if apierrors.IsNotFound(err) && optional != nil && *optional {
				return map[string][]byte{}, nil
			}
			return nil, fmt.Errorf("volume %s: secret %s: %w", v.Name, name, err)
		}
		return s.Data, nil
	}
	downwardFiles := func(items []corev1.DownwardAPIVolumeFile) (map[string][]byte, error) {
		files := map[string][]byte{}
		for _, it := range items {
			if it.FieldRef == nil {
				continue
			}
			val, err := r.fieldValue(it.FieldRef.FieldPath)
			if err != nil {
				return nil, err
			}
			files[it.Path] = []byte(val)
		}
		return files, nil
	}
	switch {
	case v.EmptyDir != nil:
		return os.MkdirAll(dir, 0o755)
	case v.ConfigMap != nil:
		files, err := configMapFiles(v.ConfigMap.Name, v.ConfigMap.Optional)
		if err != nil {
			return err
		}
		return writeFiles(dir, files, v.ConfigMap.Items)
	case v.Secret != nil:
		files, err := secretFiles(v.Secret.SecretName, v.Secret.Optional)
		if err != nil {
			return err
		}
		return writeFiles(dir, files, v.Secret.Items)
	case v.DownwardAPI != nil:
		files, err := downwardFiles(v.DownwardAPI.Items)
		if err != nil {
			return err
		}
		return writeFiles(dir, files, nil)
	case v.Projected != nil:
		for _, src := range v.Projected.Sources {
			var files map[string][]byte
			var items []corev1.KeyToPath
			var err error
			switch {
			case src.ConfigMap != nil:
				files, err = configMapFiles(src.ConfigMap.Name, src.ConfigMap.Optional)
				items = src.ConfigMap.Items
			case src.Secret != nil:
				files, err = secretFiles(src.Secret.Name, src.Secret.Optional)
				items = src.Secret.Items
			case src.DownwardAPI != nil:
				files, err = downwardFiles(src.DownwardAPI.Items)
			case src.ServiceAccountToken != nil:
				files, err = r.serviceAccountToken(ctx, src.ServiceAccountToken, dir)
			}
			if err != nil {
				return err
			}
			if err := writeFiles(dir, files, items); err != nil {
				return err
			}
		}
		return nil
	}
	return &podError{"Unsupported", fmt.Sprintf("volume %s: only configMap, secret, downwardAPI, projected and emptyDir volumes run on the local node", v.Name)}
}

// serviceAccountToken asks the TokenRequest API for the pod's token (bound to the pod, as a kubelet does) and
// writes a kubeconfig that uses it; a goroutine refreshes the token at 80% of its lifetime.
func (r *podRunner) serviceAccountToken(ctx context.Context, src *corev1.ServiceAccountTokenProjection, dir string) (map[string][]byte, error) {
	request := func() (*authenticationv1.TokenRequest, error) {
		exp := int64(3607)
		if src.ExpirationSeconds != nil {
			exp = *src.ExpirationSeconds
		}
		tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
			ExpirationSeconds: &exp,
			BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: r.pod.Name, UID: r.pod.UID},
		}}
		if src.Audience != "" {
			tr.Spec.Audiences = []string{src.Audience}
		}
		sa := r.pod.Spec.ServiceAccountName
		if sa == "" {
			sa = "default"
		}
		return r.agent.client.CoreV1().ServiceAccounts(r.pod.Namespace).CreateToken(ctx, sa, tr, metav1.CreateOptions{})
	}
	tr, err := request()
	if err != nil {
		return nil, fmt.Errorf("service account token: %w", err)
	}
	tokenPath := filepath.Join(dir, src.Path)
	kubeconfig := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {server: %q, certificate-authority: %q}
users:
- name: pod
  user: {tokenFile: %q}
contexts:
- name: pod
  context: {cluster: local, user: pod, namespace: %q}
current-context: pod
`, r.agent.cfg.APIServer, r.agent.cfg.CAFile, tokenPath, r.pod.Namespace)
	if err := os.MkdirAll(r.dir, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(r.dir, "kubeconfig"), []byte(kubeconfig), 0o600); err != nil {
		return nil, err
	}
	go func(expiry time.Time, issued time.Time) {
		for {
			wait := time.Duration(float64(expiry.Sub(issued)) * 0.8)
			select {
			case <-ctx.Done():
				return
			case <-r.deleted:
				return
			case <-time.After(wait):
			}
			next, err := request()
			if err != nil {
				r.logf("refreshing service account token: %v", err)
				issued = time.Now()
				expiry = issued.Add(time.Minute)
				continue
			}
			_ = os.WriteFile(tokenPath, []byte(next.Status.Token), 0o600)
			issued, expiry = time.Now(), next.Status.ExpirationTimestamp.Time
		}
	}(tr.Status.ExpirationTimestamp.Time, time.Now())
	return map[string][]byte{src.Path: []byte(tr.Status.Token)}, nil
}

type containerResult struct {
	exitCode int
}

// runContainer runs one container's process until it ends for good (restartPolicy) or the pod is deleted.
func (r *podRunner) runContainer(ctx context.Context, c preparedContainer, podStart metav1.Time) containerResult {
	restarts := int32(0)
	backoff := restartBackoff0
	var lastState corev1.ContainerState
	for {
		_ = os.WriteFile(c.termPath, nil, 0o644)
		logFile, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			r.logf("container %s: log file: %v", c.spec.Name, err)
			return containerResult{exitCode: 128}
		}
		cmd := exec.Command(c.binary, c.args...)
		cmd.Env = c.env
		cmd.Dir = r.dir
		cmd.Stdout, cmd.Stderr = logFile, logFile
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		started := metav1.Now()
		// Start under the lock that requestDelete takes: a process either starts before the pod is marked
		// deleting (and killAll sees it) or not at all.
		r.mu.Lock()
		if r.deleting {
			r.mu.Unlock()
			logFile.Close()
			return containerResult{exitCode: 0}
		}
		err = cmd.Start()
		if err == nil {
			r.procs[c.spec.Name] = cmd
			r.ready[c.spec.Name] = c.spec.ReadinessProbe == nil
		}
		r.mu.Unlock()
		if err != nil {
			logFile.Close()
			r.setContainerStatus(ctx, c.spec, corev1.ContainerStatus{Name: c.spec.Name, Image: c.spec.Image,
				State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 128,
					Reason: "StartError", Message: err.Error(), StartedAt: started, FinishedAt: metav1.Now()}}}, podStart)
			return containerResult{exitCode: 128}
		}
		containerID := fmt.Sprintf("local://%d", cmd.Process.Pid)
		r.logf("container %s started as pid %d on %s", c.spec.Name, cmd.Process.Pid, r.ip)
		running := func() corev1.ContainerStatus {
			r.mu.Lock()
			ready := r.ready[c.spec.Name]
			r.mu.Unlock()
			t := true
			return corev1.ContainerStatus{Name: c.spec.Name, Image: c.spec.Image, ImageID: "local://" + c.binary,
				ContainerID: containerID, Ready: ready, Started: &t, RestartCount: restarts, LastTerminationState: lastState,
				State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: started}}}
		}
		r.setContainerStatus(ctx, c.spec, running(), podStart)
		probeDone := make(chan struct{})
		if c.spec.ReadinessProbe != nil {
			go r.probeReadiness(ctx, c.spec, probeDone, func() { r.setContainerStatus(ctx, c.spec, running(), podStart) })
		}
		waitErr := cmd.Wait()
		close(probeDone)
		logFile.Close()
		r.mu.Lock()
		delete(r.procs, c.spec.Name)
		r.ready[c.spec.Name] = false
		r.mu.Unlock()

		exitCode := 0
		var exitErr *exec.ExitError
		if errors.As(waitErr, &exitErr) {
			if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				exitCode = 128 + int(ws.Signal())
			} else {
				exitCode = exitErr.ExitCode()
			}
		}
		term := &corev1.ContainerStateTerminated{ExitCode: int32(exitCode), Reason: "Completed",
			StartedAt: started, FinishedAt: metav1.Now(), ContainerID: containerID,
			Message: terminationMessage(c, exitCode)}
		if exitCode != 0 {
			term.Reason = "Error"
		}
		r.logf("container %s exited with code %d", c.spec.Name, exitCode)
		if ctx.Err() != nil {
			return containerResult{exitCode: exitCode}
		}
		status := corev1.ContainerStatus{Name: c.spec.Name, Image: c.spec.Image, ImageID: "local://" + c.binary,
			ContainerID: containerID, RestartCount: restarts, LastTerminationState: lastState,
			State: corev1.ContainerState{Terminated: term}}
		policy := r.pod.Spec.RestartPolicy
		again := !r.isDeleting() && (policy == corev1.RestartPolicyAlways ||
			(policy == corev1.RestartPolicyOnFailure && exitCode != 0))
		if !again {
			r.setContainerStatus(ctx, c.spec, status, podStart)
			return containerResult{exitCode: exitCode}
		}
		lastState = corev1.ContainerState{Terminated: term}
		status.LastTerminationState = lastState
		status.State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff",
			Message: fmt.Sprintf("back-off %s restarting failed container %s", backoff, c.spec.Name)}}
		r.setContainerStatus(ctx, c.spec, status, podStart)
		select {
		case <-ctx.Done():
			return containerResult{exitCode: exitCode}
		case <-r.deleted:
			return containerResult{exitCode: exitCode}
		case <-time.After(backoff):
		}
		restarts++
		backoff = min(backoff*2, restartBackoffMx)
	}
}

// terminationMessage reads what the process left at its terminationMessagePath, or the tail of its log when
// that is empty, the container failed and the policy says FallbackToLogsOnError.
func terminationMessage(c preparedContainer, exitCode int) string {
	msg, _ := readTail(c.termPath, maxTermMessage, false)
	if msg == "" && exitCode != 0 && c.spec.TerminationMessagePolicy == corev1.TerminationMessageFallbackToLogsOnError {
		msg, _ = readTail(c.logPath, fallbackLogBytes, true)
	}
	return msg
}

func readTail(path string, limit int64, tail bool) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return "", err
	}
	if tail && info.Size() > limit {
		if _, err := f.Seek(info.Size()-limit, io.SeekStart); err != nil {
			return "", err
		}
	}
	b, err := io.ReadAll(io.LimitReader(f, limit))
	return string(b), err
}

func (r *podRunner) probeReadiness(ctx context.Context, c corev1.Container, done <-chan struct{}, changed func()) {
	p := c.ReadinessProbe
	if p.HTTPGet == nil {
		r.logf("container %s: only httpGet readiness probes run here; treating it as ready", c.Name)
		r.mu.Lock()
		r.ready[c.Name] = true
		r.mu.Unlock()
		changed()
		return
	}
	port := p.HTTPGet.Port.IntValue()
	if p.HTTPGet.Port.Type == intstr.String {
		for _, cp := range c.Ports {
			if cp.Name == p.HTTPGet.Port.StrVal {
				port = int(cp.ContainerPort)
			}
		}
	}
	host := p.HTTPGet.Host
	if host == "" {
		host = r.ip
	}
	scheme := strings.ToLower(string(p.HTTPGet.Scheme))
	if scheme == "" {
		scheme = "http"
	}
	url := fmt.Sprintf("%s://%s%s", scheme, net.JoinHostPort(host, strconv.Itoa(port)), p.HTTPGet.Path)
	period := time.Duration(max(p.PeriodSeconds, 1)) * time.Second
	timeout := time.Duration(max(p.TimeoutSeconds, 1)) * time.Second
	success, failure := max(p.SuccessThreshold, 1), max(p.FailureThreshold, 1)
	client := &http.Client{Timeout: timeout}
	select {
	case <-done:
		return
	case <-time.After(time.Duration(p.InitialDelaySeconds) * time.Second):
	}
	var okRun, failRun int32
	for {
		ok := false
		if resp, err := client.Get(url); err == nil {
			ok = resp.StatusCode >= 200 && resp.StatusCode < 400
			resp.Body.Close()
		}
		if ok {
			okRun, failRun = okRun+1, 0
		} else {
			okRun, failRun = 0, failRun+1
		}
		r.mu.Lock()
		was := r.ready[c.Name]
		now := was
		if okRun >= success {
			now = true
		} else if failRun >= failure {
			now = false
		}
		r.ready[c.Name] = now
		r.mu.Unlock()
		if now != was {
			changed()
		}
		select {
		case <-done:
			return
		case <-ctx.Done():
			return
		case <-time.After(period):
		}
	}
}

// killAll ends every process of the pod: SIGTERM to each process group, SIGKILL after the grace period.
func (r *podRunner) killAll(grace time.Duration) {
	r.mu.Lock()
	procs := make([]*exec.Cmd, 0, len(r.procs))
	for _, p := range r.procs {
		procs = append(procs, p)
	}
	r.mu.Unlock()
	for _, p := range procs {
		_ = syscall.Kill(-p.Process.Pid, syscall.SIGTERM)
	}
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		r.mu.Lock()
		left := len(r.procs)
		r.mu.Unlock()
		if left == 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, p := range procs {
		_ = syscall.Kill(-p.Process.Pid, syscall.SIGKILL)
	}
}

// ---- status ----

func (r *podRunner) setStatus(ctx context.Context, mutate func(*corev1.PodStatus)) {
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		pod, err := r.agent.client.CoreV1().Pods(r.pod.Namespace).Get(ctx, r.pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if pod.UID != r.pod.UID {
			return nil
		}
		mutate(&pod.Status)
		updated, err := r.agent.client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
		if err == nil {
			r.mu.Lock()
			r.pod.Status = updated.Status
			r.mu.Unlock()
		}
		return err
	})
	if err != nil && !apierrors.IsNotFound(err) && ctx.Err() == nil {
		r.logf("updating status: %v", err)
	}
}

func (r *podRunner) setContainerStatus(ctx context.Context, c corev1.Container, cs corev1.ContainerStatus, podStart metav1.Time) {
	r.setStatus(ctx, func(s *corev1.PodStatus) {
		s.HostIP, s.PodIP = "127.0.0.1", r.ip
		s.HostIPs = []corev1.HostIP{{IP: "127.0.0.1"}}
		s.PodIPs = []corev1.PodIP{{IP: r.ip}}
		if s.StartTime == nil {
			s.StartTime = &podStart
		}
		if len(s.ContainerStatuses) != len(r.pod.Spec.Containers) {
			s.ContainerStatuses = waitingStatuses(r.pod, "ContainerCreating", "")
		}
		for i := range s.ContainerStatuses {
			if s.ContainerStatuses[i].Name == c.Name {
				s.ContainerStatuses[i] = cs
			}
		}
		allReady, anyRunning := true, false
		for _, st := range s.ContainerStatuses {
			allReady = allReady && st.Ready
			anyRunning = anyRunning || st.State.Running != nil || st.State.Waiting != nil && st.State.Waiting.Reason == "CrashLoopBackOff"
		}
		if anyRunning {
			s.Phase = corev1.PodRunning
		}
		s.Conditions = podConditions(s.Conditions, true, allReady)
	})
}

func waitingStatuses(pod *corev1.Pod, reason, message string) []corev1.ContainerStatus {
	out := make([]corev1.ContainerStatus, 0, len(pod.Spec.Containers))
	for _, c := range pod.Spec.Containers {
		out = append(out, corev1.ContainerStatus{Name: c.Name, Image: c.Image,
			State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: message}}})
	}
	return out
}

func podConditions(old []corev1.PodCondition, initialized, ready bool) []corev1.PodCondition {
	now := metav1.Now()
	status := func(b bool) corev1.ConditionStatus {
		if b {
			return corev1.ConditionTrue
		}
		return corev1.ConditionFalse
	}
	want := map[corev1.PodConditionType]corev1.ConditionStatus{
		corev1.PodScheduled:    corev1.ConditionTrue,
		corev1.PodInitialized:  status(initialized),
		corev1.ContainersReady: status(ready),
		corev1.PodReady:        status(ready),
	}
	var out []corev1.PodCondition
	for _, t := range []corev1.PodConditionType{corev1.PodScheduled, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady} {
		c := corev1.PodCondition{Type: t, Status: want[t], LastTransitionTime: now}
		for _, o := range old {
			if o.Type == t && o.Status == want[t] {
				c.LastTransitionTime = o.LastTransitionTime
			}
		}
		out = append(out, c)
	}
	return out
}
