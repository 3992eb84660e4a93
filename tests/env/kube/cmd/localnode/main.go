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
	"flag"
	"log"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
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
