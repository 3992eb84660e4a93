// Volumes written as files under the pod's directory: ConfigMap, Secret, downward API, projected
// (service account token) and emptyDir.

package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

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
