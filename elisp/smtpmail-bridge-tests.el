;;; smtpmail-bridge-tests.el --- ERT tests for smtpmail-bridge  -*- lexical-binding: t; -*-

;;; Commentary:

;; Batch tests of the shim without the Python backend: a `sh' process that
;; copies our requests to a file stands in for it, so what the shim writes
;; on the wire is checked as data.

;;; Code:

(require 'ert)
(require 'smtpmail-bridge)

(defmacro smtpmail-bridge-tests--with-recorder (var &rest body)
  "Run BODY with a backend that records requests; bind VAR to its file."
  (declare (indent 1))
  `(let* ((,var (make-temp-file "smtpmail-bridge-requests-"))
          (smtpmail-bridge-program (list "sh" "-c" (format "cat > %s" ,var)))
          (smtpmail-bridge--process nil)
          (smtpmail-bridge--jobs (make-hash-table))
          (smtpmail-bridge--next-id 0))
     (unwind-protect (progn ,@body)
       (when (process-live-p smtpmail-bridge--process)
         (set-process-sentinel smtpmail-bridge--process #'ignore)
         (process-send-eof smtpmail-bridge--process)
         (while (process-live-p smtpmail-bridge--process)
           (accept-process-output smtpmail-bridge--process 0.05)))
       (delete-file ,var))))

(defun smtpmail-bridge-tests--requests (file)
  "Stop the recorder and return the requests in FILE as forms."
  (process-send-eof smtpmail-bridge--process)
  (set-process-sentinel smtpmail-bridge--process #'ignore)
  (while (process-live-p smtpmail-bridge--process)
    (accept-process-output smtpmail-bridge--process 0.05))
  (with-temp-buffer
    (let ((coding-system-for-read 'utf-8)) (insert-file-contents file))
    (mapcar (lambda (l) (car (read-from-string l)))
            (split-string (buffer-string) "\n" t))))

(defun smtpmail-bridge-tests--mail-buffer ()
  "A mail-mode buffer without From, Date or Message-Id."
  (with-current-buffer (get-buffer-create "*smtpmail-bridge-test*")
    (erase-buffer)
    (mail-mode)
    (insert "To: bob@example.net\nBcc: eve@example.com\nSubject: \nX: é\n"
            mail-header-separator "\nbody\n.dot")
    (current-buffer)))

(ert-deftest smtpmail-bridge-print-is-one-line-of-plain-data ()
  (let* ((form (list 'send :id 3 :s "a\"b\\c\nd\re" :n -4 :l '(x "y" nil t)))
         (line (smtpmail-bridge--print form)))
    (should-not (string-search "\n" line))
    (should (equal (car (read-from-string line)) form))))

(ert-deftest smtpmail-bridge-prepare-does-smtpmail-send-it-s-work ()
  (let ((user-mail-address "alice@example.org")
        (user-full-name "Alice Ex")
        (mail-aliases nil))
    (with-current-buffer (smtpmail-bridge-tests--mail-buffer)
      (let* ((prepared (smtpmail-bridge-prepare))
             (text (decode-coding-string (car prepared) 'utf-8)))
        (should (equal (cdr prepared) "alice@example.org"))
        (should-not (multibyte-string-p (car prepared)))
        (should (string-match-p "\\`Date: .*\nMessage-Id: <.*>\nFrom: Alice Ex <alice@example.org>\n" text))
        (should (string-search "\nBcc: eve@example.com\n" text))   ; stripped by the backend
        (should-not (string-search "Subject:" text))               ; empty Subject removed
        (should-not (string-search mail-header-separator text))
        (should (string-search "X: =?utf-8?" text))                ; RFC 2047
        (should (string-search "\n\nbody\n.dot\n" text))
        ;; The composition buffer is untouched and no temp buffer is left.
        (should (string-search mail-header-separator (buffer-string)))
        (should-not (get-buffer " smtpmail temp"))
        (should-not (get-buffer "*smtp-mail*"))))))

(ert-deftest smtpmail-bridge-prepare-runs-fcc ()
  (let ((fcc (expand-file-name (make-temp-name "smtpmail-bridge-fcc-")
                               temporary-file-directory))
        (user-mail-address "alice@example.org")
        (mail-aliases nil))
    (unwind-protect
        (with-current-buffer (smtpmail-bridge-tests--mail-buffer)
          (goto-char (point-min))
          (insert "Fcc: " fcc "\n")
          (let ((text (car (smtpmail-bridge-prepare))))
            (should-not (string-search "Fcc:" text))
            (with-temp-buffer
              (insert-file-contents fcc)
              (should (string-match-p "\\`From " (buffer-string)))
              (should (string-search "Bcc: eve@example.com" (buffer-string))))))
      (when (file-exists-p fcc) (delete-file fcc)))))

(ert-deftest smtpmail-bridge-send-it-writes-a-send-request ()
  (smtpmail-bridge-tests--with-recorder file
    (let ((user-mail-address "alice@example.org")
          (mail-aliases nil)
          (smtpmail-smtp-server "mail.example.org")
          (smtpmail-smtp-service 587)
          (smtpmail-stream-type 'starttls)
          (smtpmail-queue-dir "~/q/"))
      (with-current-buffer (smtpmail-bridge-tests--mail-buffer)
        (should-not (smtpmail-bridge-send-it)))
      (should (process-query-on-exit-flag smtpmail-bridge--process))
      (let* ((req (car (smtpmail-bridge-tests--requests file)))
             (args (cdr req))
             (vars (plist-get args :vars)))
        (should (eq (car req) 'send))
        (should (eql (plist-get args :id) 1))
        (should (equal (plist-get args :sender) "alice@example.org"))
        (should (eq (plist-get args :queue-on-failure) t))
        (should (string-search "Bcc: eve@example.com"
                               (base64-decode-string (plist-get args :data))))
        (should (equal (plist-get vars :smtp-server) "mail.example.org"))
        (should (eql (plist-get vars :smtp-service) 587))
        (should (eq (plist-get vars :stream-type) 'starttls))
        (should (equal (plist-get vars :queue-dir) (expand-file-name "~/q/")))))))

(ert-deftest smtpmail-bridge-large-messages-go-by-file ()
  (smtpmail-bridge-tests--with-recorder file
    (let* ((smtpmail-bridge-inline-limit 10)
           (bytes (apply #'unibyte-string (number-sequence 0 255)))
           (msg (smtpmail-bridge--message-args bytes "a@b.c"))
           (path (plist-get (car msg) :file)))
      (unwind-protect
          (progn
            (should-not (plist-get (car msg) :data))
            (should (equal path (cdr msg)))
            (with-temp-buffer
              (set-buffer-multibyte nil)
              (let ((coding-system-for-read 'no-conversion))
                (insert-file-contents path))
              (should (equal (buffer-string) bytes))))
        (delete-file path)))))

(ert-deftest smtpmail-bridge-filter-reassembles-lines-and-dispatches ()
  (let* ((smtpmail-bridge--jobs (make-hash-table))
         (smtpmail-bridge--partial "")
         got events
         (job (smtpmail-bridge--make-job
               :id 7 :op 'list
               :on-success (lambda (r) (setq got r))
               :on-event (lambda (e) (push e events)))))
    (puthash 7 job smtpmail-bridge--jobs)
    (smtpmail-bridge--filter nil "(event :id 7 :type progress :done 1 :total 2)\n(ok :id")
    (should (equal (plist-get (car events) :done) 1))
    (should-not got)
    (smtpmail-bridge--filter nil " 7 :entries nil :s \"x\\ny\")\n")
    (should (equal (plist-get got :s) "x\ny"))
    (should (smtpmail-bridge--job-done job))
    (should (= 0 (hash-table-count smtpmail-bridge--jobs)))))

(ert-deftest smtpmail-bridge-garbage-from-the-backend-is-logged-not-fatal ()
  (let ((smtpmail-bridge--jobs (make-hash-table))
        (smtpmail-bridge--partial ""))
    (smtpmail-bridge--filter nil "(unbalanced\n#<buffer x>\n(error :id nil :kind protocol :message \"m\")\n")
    (with-current-buffer "*smtpmail-bridge*"
      (should (string-search "bad line from backend" (buffer-string)))
      (should (string-search "backend error: m" (buffer-string))))))

(ert-deftest smtpmail-bridge-credentials-come-from-auth-source ()
  (let* ((authinfo (make-temp-file "smtpmail-bridge-authinfo-"))
         (auth-sources (list authinfo))
         (auth-source-do-cache nil))
    (unwind-protect
        (smtpmail-bridge-tests--with-recorder file
          (with-temp-file authinfo
            (insert "machine other port 587 login x password y\n"
                    "machine smtp.example.org port 587 login alice password \"p w\" smtp-auth login\n"))
          (smtpmail-bridge--ensure-process)
          (let ((job (smtpmail-bridge--make-job :id 1 :op 'send)))
            (smtpmail-bridge--answer-credentials
             job '(:cid 4 :host "smtp.example.org" :port "587" :user nil :required nil))
            (smtpmail-bridge--answer-credentials
             job '(:cid 5 :host "nowhere" :port "25" :user "bob" :required t))
            (should (equal (smtpmail-bridge--job-host job) "nowhere")))
          (let ((reqs (smtpmail-bridge-tests--requests file)))
            (should (equal (mapcar #'car reqs) '(credential credential)))
            (should (equal (cdr (nth 0 reqs))
                           '(:id 1 :for 4 :user "alice" :secret "p w" :mechanism "login")))
            (should (eql (plist-get (cdr (nth 1 reqs)) :for) 5))
            (should-not (plist-get (cdr (nth 1 reqs)) :secret))
            (should (string-search "batch Emacs cannot prompt"
                                   (plist-get (cdr (nth 1 reqs)) :error)))))
      (delete-file authinfo))))

(ert-deftest smtpmail-bridge-trace-buffer-is-smtpmail-s-and-redacts-auth ()
  (let ((job (smtpmail-bridge--make-job :id 42 :op 'send))
        (smtpmail-bridge--trace-started nil))
    (smtpmail-bridge--trace job '(:host "h.example" :dir "S" :line "220 hi"))
    (smtpmail-bridge--trace job '(:host "h.example" :dir "C" :line "AUTH PLAIN AGFsaWNlAHB3"))
    (with-current-buffer "*trace of SMTP session to h.example*"
      (should (equal (buffer-string) "220 hi\r\nAUTH PLAIN <omitted>\r\n")))))

(ert-deftest smtpmail-bridge-wait-is-true-when-nothing-is-in-flight ()
  (let ((smtpmail-bridge--jobs (make-hash-table)))
    (should (smtpmail-bridge-wait 0))
    (puthash 1 (smtpmail-bridge--make-job :id 1 :op 'send) smtpmail-bridge--jobs)
    (should-not (smtpmail-bridge-wait 0))))

(ert-deftest smtpmail-bridge-missing-backend-is-a-clear-error ()
  "A wrong `smtpmail-bridge-program' says so, and the buffer is left as it was."
  (let ((smtpmail-bridge-program '("/nonexistent/smtpmail-bridge" "serve"))
        (smtpmail-bridge--process nil)
        (user-mail-address "alice@example.org"))
    (with-temp-buffer
      (mail-mode)
      (insert "To: b@example.org\nSubject: x\n" mail-header-separator "\nhi\n")
      (let ((before (buffer-string))
            (err (should-error (smtpmail-bridge-send-it) :type 'smtpmail-bridge-error)))
        (should (string-match-p "/nonexistent/smtpmail-bridge\" not found" (cadr err)))
        (should (equal (buffer-string) before))))))

(provide 'smtpmail-bridge-tests)
;;; smtpmail-bridge-tests.el ends here
